using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Npgsql;

namespace MergeCluster.Cluster.Tests.Infrastructure;

/// <summary>
/// A real PostgreSQL server for the tests: initdb into a temporary directory owned by the postgres user, started as
/// that user on 127.0.0.1 and a free port with its socket in that directory, password (scram) auth on loopback.
/// <see cref="Shared"/> serves the whole test assembly (one database per test via <see cref="CreateDatabaseAsync"/>);
/// a test that restarts the server starts its own with <see cref="StartAsync"/>.
/// </summary>
public sealed class PostgresServer : IAsyncDisposable
{
    /// <summary>The superuser's password: tests assert it never shows up in any output.</summary>
    public const string Password = "Sup3r-s3cret-pw";

    private static readonly Lazy<Task<PostgresServer>> SharedServer = new(async () =>
    {
        var server = await StartAsync();
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Stop(server.Directory);
        return server;
    });

    /// <summary>The server shared by the test assembly, started on first use and stopped when the test host exits.</summary>
    public static Task<PostgresServer> Shared => SharedServer.Value;

    // Tests need no durability across an OS crash, only across a server's: fsync off. Commits are asynchronous unless a
    // test asks otherwise, since most tests only need a fast ledger.
    private const string DefaultSettings = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400";

    private readonly string _bin;
    private readonly string _settings;
    public string Directory { get; }
    public int Port { get; }
    private string DataDirectory => System.IO.Path.Join(Directory, "data");

    private PostgresServer(string bin, string directory, int port, string settings)
    {
        _bin = bin;
        Directory = directory;
        Port = port;
        _settings = settings;
    }

    /// <summary>A connection string to a database of this server, password included.</summary>
    public string ConnectionString(string database = "postgres") =>
        $"Host=127.0.0.1;Port={Port};Username=postgres;Password={Password};Database={database};Pooling=true";

    /// <summary>A server of its own; <paramref name="settings"/> (<c>-c name=value ...</c>) override the defaults.</summary>
    public static async Task<PostgresServer> StartAsync(string settings = "")
    {
        var bin = System.IO.Directory.Exists("/usr/lib/postgresql")
            ? System.IO.Directory.GetDirectories("/usr/lib/postgresql").Select(d => System.IO.Path.Join(d, "bin"))
                .Where(d => File.Exists(System.IO.Path.Join(d, "initdb"))).OrderByDescending(d => d, StringComparer.Ordinal).FirstOrDefault()
            : null;
        if (bin is null) throw new InvalidOperationException("PostgreSQL is not installed: run scripts/test.sh (it apt-get installs postgresql)");
        StopOrphans();

        var directory = System.IO.Directory.CreateTempSubdirectory("mergecluster-pg-").FullName;
        await File.WriteAllTextAsync(System.IO.Path.Join(directory, "owner.pid"), Environment.ProcessId.ToString());
        var pwfile = System.IO.Path.Join(directory, "pwfile");
        await File.WriteAllTextAsync(pwfile, Password + "\n");
        if (Environment.UserName == "root") Check(await ProcessRunner.RunAsync("chown", ["-R", "postgres:", directory]), "chown");
        Check(await ProcessRunner.RunAsPostgresAsync(System.IO.Path.Join(bin, "initdb"), "-D", System.IO.Path.Join(directory, "data"),
            "-U", "postgres", "--pwfile", pwfile, "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"), "initdb");

        for (int tries = 0; ; tries++)
        {
            var server = new PostgresServer(bin, directory, FreePort(), $"{DefaultSettings} {settings}");
            var started = await server.StartServerAsync();
            if (started.ExitCode == 0) return server;
            // Another process may have taken the port between probing and binding.
            if (tries == 3) throw new InvalidOperationException($"pg_ctl start failed: {started.Output} {ReadLog(directory)}");
        }
    }

    /// <summary>Creates an empty database and returns a connection string to it.</summary>
    public async Task<string> CreateDatabaseAsync()
    {
        var name = $"t_{Guid.NewGuid():N}";
        await using var conn = new NpgsqlConnection(ConnectionString());
        await conn.OpenAsync();
        await using var cmd = new NpgsqlCommand($"CREATE DATABASE {name}", conn);
        await cmd.ExecuteNonQueryAsync();
        return ConnectionString(name);
    }

    /// <summary>
    /// Stops the server, keeps it down for a moment, and starts it again. A fast shutdown disconnects clients and
    /// flushes everything committed; a crash (immediate shutdown) loses the asynchronous commits not yet flushed.
    /// </summary>
    public async Task RestartAsync(TimeSpan down, bool crash = false)
    {
        Check(await PgCtlAsync("stop", "-m", crash ? "immediate" : "fast"), "pg_ctl stop");
        await Task.Delay(down);
        Check(await StartServerAsync(), "pg_ctl start");
    }

    private Task<ProcessRunner.Result> StartServerAsync() =>
        PgCtlAsync("start", "-o", $"-p {Port} -k {Directory} -c listen_addresses=127.0.0.1 {_settings}");

    private Task<ProcessRunner.Result> PgCtlAsync(string action, params string[] args) =>
        ProcessRunner.RunAsPostgresAsync(System.IO.Path.Join(_bin, "pg_ctl"), ["-D", DataDirectory, "-l", System.IO.Path.Join(Directory, "log"), "-w", "-t", "60", action, .. args]);

    public ValueTask DisposeAsync()
    {
        Stop(Directory);
        return ValueTask.CompletedTask;
    }

    /// <summary>
    /// Immediate shutdown (SIGQUIT to the postmaster), then the directory goes, both done by a detached shell: the test
    /// host may be killed moments after its exit handlers start, and thousands of files (a database per test) take a while.
    /// </summary>
    private static void Stop(string directory)
    {
        var pidFile = System.IO.Path.Join(directory, "data", "postmaster.pid");
        // Only a postmaster serving this very directory is signalled, never a process that reused its pid.
        var stop = File.Exists(pidFile) && int.TryParse(File.ReadLines(pidFile).FirstOrDefault(), out int pid) && ServesDirectory(pid, directory)
            ? $"kill -QUIT {pid}; sleep 1; "
            : "";
        Process.Start("sh", ["-c", stop + "rm -rf \"$0\"", directory])?.Dispose();
    }

    private static bool ServesDirectory(int pid, string directory)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline").Contains(System.IO.Path.Join(directory, "data"), StringComparison.Ordinal);
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>Servers left behind by a test host that died (its owner.pid no longer runs) are stopped and removed.</summary>
    private static void StopOrphans()
    {
        foreach (var dir in System.IO.Directory.GetDirectories(System.IO.Path.GetTempPath(), "mergecluster-pg-*"))
        {
            var ownerFile = System.IO.Path.Join(dir, "owner.pid");
            if (!File.Exists(ownerFile) || !int.TryParse(File.ReadAllText(ownerFile), out int owner)) continue;
            if (System.IO.Directory.Exists($"/proc/{owner}")) continue;
            Stop(dir);
        }
    }

    /// <summary>A loopback port nobody listens on right now.</summary>
    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static string ReadLog(string directory)
    {
        var log = System.IO.Path.Join(directory, "log");
        return File.Exists(log) ? File.ReadAllText(log) : "";
    }

    private static void Check(ProcessRunner.Result result, string what)
    {
        if (result.ExitCode != 0) throw new InvalidOperationException($"{what} failed ({result.ExitCode}): {result.Output}");
    }
}
