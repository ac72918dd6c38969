using System.Net;
using System.Net.Sockets;
using MergeCluster.Cluster.Client;
using MergeCluster.Cluster.Contracts;
using Xunit.Abstractions;

namespace MergeCluster.Cluster.Tests.Infrastructure;

/// <summary>
/// One cluster test's world: real Azurite (shared, or the test's own when it stops it), a cluster and service id of
/// its own, a data root, real <c>mergecluster silo</c> processes on free ports, and an Orleans client the test watches
/// the job through. Disposing kills what still runs and writes every silo's output to the test log.
/// </summary>
public sealed class ClusterFixture : IAsyncDisposable
{
    private readonly ITestOutputHelper _output;
    private readonly List<SiloProcess> _silos = [];
    private readonly bool _ownsStorage;
    private ClusterConnection? _client;

    public Azurite Storage { get; }
    public TempDirectory Root { get; } = new("mergecluster-cluster");
    public string ClusterId { get; } = $"c{Guid.NewGuid():N}"[..12];
    public string ServiceId { get; } = $"s{Guid.NewGuid():N}"[..12];
    public IReadOnlyList<SiloProcess> Silos => _silos;

    private ClusterFixture(ITestOutputHelper output, Azurite storage, bool owns)
    {
        _output = output;
        Storage = storage;
        _ownsStorage = owns;
    }

    /// <summary>On the shared Azurite, or on the test's own (a test that kills storage must not take others down).</summary>
    public static async Task<ClusterFixture> CreateAsync(ITestOutputHelper output, bool ownStorage = false) =>
        ownStorage ? new(output, await Azurite.StartAsync(), true) : new(output, await Azurite.Shared, false);

    /// <summary>The storage and ids the cluster's processes get, through the environment as a deployment passes them.</summary>
    public Dictionary<string, string> Environment => new()
    {
        ["MERGECLUSTER_STORAGE"] = Storage.ConnectionString,
        ["MERGECLUSTER_CLUSTER_ID"] = ClusterId,
        ["MERGECLUSTER_SERVICE_ID"] = ServiceId,
    };

    /// <summary>Starts a silo process on free ports with the fixture's root as data root, and waits until it has joined.</summary>
    public Task<SiloProcess> StartSiloAsync(string name, params string[] args) => StartSiloAsync(name, new Dictionary<string, string>(), args);

    /// <summary>As above, with more environment variables (OTEL_* for instance).</summary>
    public async Task<SiloProcess> StartSiloAsync(string name, IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        for (int attempt = 1; ; attempt++)
        {
            var silo = await LaunchSiloAsync(name, environment, args);
            try
            {
                await silo.WaitForOutputAsync("is ready");
                return silo;
            }
            // Another process (a test server of a parallel test project) bound one of its ports first: new ports.
            catch (InvalidOperationException) when (attempt < 3 && silo.HasExited && silo.Output.Contains("address already in use", StringComparison.OrdinalIgnoreCase))
            {
                _output.WriteLine($"silo {name}: a port was taken, starting again on other ports:\n{silo.Output}");
                _silos.Remove(silo);
                await silo.DisposeAsync();
            }
        }
    }

    /// <summary>Starts a silo process as <see cref="StartSiloAsync(string, string[])"/> does, without waiting for it to join.</summary>
    public async Task<SiloProcess> LaunchSiloAsync(string name, IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var env = Environment;
        foreach (var (key, value) in environment) env[key] = value;
        var silo = await SiloProcess.StartAsync(name, env,
        [
            "--data-root", Root.Path, "--advertised-ip", "127.0.0.1",
            "--silo-port", FreePort().ToString(), "--gateway-port", FreePort().ToString(), .. args,
        ]);
        _silos.Add(silo);
        return silo;
    }

    /// <summary>Writes a file into the data root and returns its path.</summary>
    public string WriteRecipe(string text, string name = "recipe.yaml")
    {
        var path = Root.File(name);
        File.WriteAllText(path, text);
        return path;
    }

    /// <summary>Runs a CLI command against this cluster.</summary>
    public Task<ProcessRunner.Result> CliAsync(params string[] args) => MergeClusterCli.RunAsync(Environment, args);

    /// <summary>As above, with more environment variables.</summary>
    public Task<ProcessRunner.Result> CliAsync(IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var env = Environment;
        foreach (var (key, value) in environment) env[key] = value;
        return MergeClusterCli.RunAsync(env, args);
    }

    /// <summary><c>submit RECIPE [options]</c> without waiting; returns the job id it printed.</summary>
    public async Task<long> SubmitAsync(string recipe, params string[] options)
    {
        var result = await CliAsync(["submit", recipe, .. options]);
        Assert.True(result.ExitCode == 0, result.Output + AllSiloOutput);
        return long.Parse(result.Stdout.Split('\n')[0].Trim());
    }

    /// <summary>An Orleans client of the test's own, for watching jobs without starting a CLI process per look.</summary>
    public async Task<ClusterConnection> ClientAsync() =>
        _client ??= await ClusterConnection.ConnectAsync(new ClientSettings(StorageConnection.Parse(Storage.ConnectionString), ClusterId, ServiceId), "test", default);

    /// <summary>The job's status; while the job grain moves or storage is away, the call may fail: it is asked again.</summary>
    public async Task<JobStatus> StatusAsync(long id)
    {
        var client = await ClientAsync();
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                return await client.StatusAsync(id);
            }
            catch (Exception) when (attempt < 120)
            {
                await Task.Delay(500);
            }
        }
    }

    public async Task<JobStatus> WaitForAsync(long id, Func<JobStatus, bool> condition, string what, TimeSpan? timeout = null)
    {
        JobStatus? status = null;
        await Poll.UntilAsync(async () => condition(status = await StatusAsync(id)), $"job {id}: {what}\n{AllSiloOutput}", timeout ?? TimeSpan.FromMinutes(3));
        return status!;
    }

    /// <summary>Until the job is final: succeeded, or failed or cancelled with its files removed.</summary>
    public Task<JobStatus> WaitForJobEndAsync(long id, TimeSpan? timeout = null) =>
        WaitForAsync(id, s => s.State == JobPhase.Succeeded || (s.State is JobPhase.Failed or JobPhase.Cancelled && !s.CleaningUp), "ends", timeout);

    /// <summary>Every silo's output so far, for assertions over the whole cluster.</summary>
    public string AllSiloOutput => string.Join('\n', _silos.Select(s => $"---- {s.Name} ----\n{s.Output}"));

    public static int FreePort() => TestPorts.Free();

    public async ValueTask DisposeAsync()
    {
        if (_client is not null)
        {
            try { await _client.DisposeAsync(); }
            catch (Exception e) { _output.WriteLine($"client: {e.Message}"); }
        }
        foreach (var silo in _silos)
        {
            await silo.DisposeAsync();
            _output.WriteLine($"---- silo {silo.Name} ----\n{silo.Output}");
        }
        if (_ownsStorage) await Storage.DisposeAsync();
        Root.Dispose();
    }
}
