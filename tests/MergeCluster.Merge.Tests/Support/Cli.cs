using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;

namespace MergeCluster.Merge.Tests.Support;

/// <summary>What one run of the command line produced.</summary>
public sealed record CliResult(string CommandLine, int ExitCode, string Stdout, string Stderr, TimeSpan Elapsed)
{
    /// <summary>Stdout parsed as one JSON document (the output of a --json command).</summary>
    public JsonElement Json()
    {
        EnsureSuccess();
        try { return JsonDocument.Parse(Stdout).RootElement.Clone(); }
        catch (JsonException e) { throw new InvalidOperationException($"{CommandLine}: stdout is not one JSON document ({e.Message}):\n{Stdout}", e); }
    }

    /// <summary>Throws with the whole output when the exit code is not 0, so a failing test shows why.</summary>
    public CliResult EnsureSuccess()
    {
        if (ExitCode != 0)
            throw new InvalidOperationException($"{CommandLine} exited {ExitCode}\n--- stderr ---\n{Stderr}\n--- stdout ---\n{Stdout}");
        return this;
    }

    /// <summary>
    /// The contract for bad input: a non-zero exit and exactly one line on stderr, "error: ...", mentioning each of
    /// <paramref name="mentions"/>, and no stack trace.
    /// </summary>
    public CliResult AssertOneLineError(params string[] mentions)
    {
        string line = SingleErrorLine();
        foreach (string m in mentions) Assert.Contains(m, line);
        return this;
    }

    /// <summary>Stderr's non-empty lines.</summary>
    public string[] StderrLines => Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    /// <summary>A failure as users must see it: non-zero exit, one `error:` line and no stack trace; returns that line.</summary>
    public string SingleErrorLine()
    {
        Assert.NotEqual(0, ExitCode);
        // The first run of ./mergecluster may announce that it is building the CLI.
        var lines = StderrLines.Where(l => !l.StartsWith("mergecluster: building")).ToArray();
        Assert.True(lines.Length == 1, $"{CommandLine}: expected one line on stderr, got:\n{Stderr}");
        Assert.StartsWith("error: ", lines[0]);
        Assert.DoesNotContain("   at ", Stderr + Stdout);
        return lines[0];
    }
}

/// <summary>
/// Runs `&lt;repo root&gt;/mergecluster` as a separate process, the way users and CI call the tool.
/// Environment overrides: MERGECLUSTER_REPO_ROOT (where the script is), MERGECLUSTER_CLI (another executable, or a
/// .dll run with dotnet), MERGECLUSTER_CLI_TIMEOUT (seconds per run; the first run may build the CLI, so the default is 600).
/// </summary>
public static class Cli
{
    private static readonly Lazy<string> Root = new(FindRepoRoot);

    /// <summary>The directory holding Cluster.sln, found by walking up from the test assembly.</summary>
    public static string RepoRoot => Root.Value;

    public static TimeSpan DefaultTimeout =>
        int.TryParse(Environment.GetEnvironmentVariable("MERGECLUSTER_CLI_TIMEOUT"), out int s) && s > 0 ? TimeSpan.FromSeconds(s) : TimeSpan.FromMinutes(10);

    public static CliResult Run(params string[] args) => Run(args, workingDirectory: null);

    /// <summary>Runs the CLI with <paramref name="args"/>, extra environment variables and a timeout; never throws on a non-zero exit.</summary>
    public static CliResult Run(IReadOnlyList<string> args, string? workingDirectory = null,
        IReadOnlyDictionary<string, string?>? environment = null, TimeSpan? timeout = null)
    {
        var start = StartInfo(args, workingDirectory ?? RepoRoot);
        foreach (var (name, value) in environment ?? new Dictionary<string, string?>())
            start.Environment[name] = value;
        string commandLine = "mergecluster " + string.Join(" ", args.Select(a => a.Contains(' ') ? $"\"{a}\"" : a));
        var clock = Stopwatch.StartNew();
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"cannot start {start.FileName}");
        process.StandardInput.Close();
        // Both pipes are drained concurrently so a chatty process cannot block on a full pipe.
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        var limit = timeout ?? DefaultTimeout;
        if (!process.WaitForExit(limit))
        {
            try { process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            process.WaitForExit();
            throw new TimeoutException($"{commandLine} did not finish within {limit.TotalSeconds:F0} s\n--- stderr ---\n{stderr.Result}\n--- stdout ---\n{stdout.Result}");
        }
        process.WaitForExit();
        return new CliResult(commandLine, process.ExitCode, stdout.Result, stderr.Result, clock.Elapsed);
    }

    /// <summary>Starts the CLI and returns at once, for tests that signal it while it runs.</summary>
    public static CliProcess Start(IReadOnlyList<string> args, string workingDirectory, IReadOnlyDictionary<string, string?>? environment = null)
    {
        var start = StartInfo(args, workingDirectory);
        foreach (var (name, value) in environment ?? new Dictionary<string, string?>())
            start.Environment[name] = value;
        return new CliProcess("mergecluster " + string.Join(" ", args), Process.Start(start) ?? throw new InvalidOperationException($"cannot start {start.FileName}"));
    }

    private static ProcessStartInfo StartInfo(IReadOnlyList<string> args, string workingDirectory)
    {
        string? custom = Environment.GetEnvironmentVariable("MERGECLUSTER_CLI");
        string executable = string.IsNullOrEmpty(custom) ? Path.Combine(RepoRoot, "mergecluster") : custom;
        var start = new ProcessStartInfo
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
        };
        if (executable.EndsWith(".dll", StringComparison.OrdinalIgnoreCase))
        {
            start.FileName = "dotnet";
            start.ArgumentList.Add(executable);
        }
        else start.FileName = executable;
        foreach (string a in args) start.ArgumentList.Add(a);
        return start;
    }

    private static string FindRepoRoot()
    {
        string? custom = Environment.GetEnvironmentVariable("MERGECLUSTER_REPO_ROOT");
        if (!string.IsNullOrEmpty(custom)) return Path.GetFullPath(custom);
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Cluster.sln"))) return dir.FullName;
        throw new InvalidOperationException($"no Cluster.sln above {AppContext.BaseDirectory}; set MERGECLUSTER_REPO_ROOT");
    }
}

/// <summary>A running CLI process: its stderr as it arrives, signals, and its end.</summary>
public sealed partial class CliProcess : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stderr = new();
    private readonly Task<string> _stdout;
    private readonly Task _stderrDone;
    private readonly SemaphoreSlim _line = new(0);

    private readonly Stopwatch _clock = Stopwatch.StartNew();

    internal CliProcess(string commandLine, Process process)
    {
        CommandLine = commandLine;
        _process = process;
        process.StandardInput.Close();
        _stdout = process.StandardOutput.ReadToEndAsync();
        _stderrDone = Task.Run(async () =>
        {
            while (await process.StandardError.ReadLineAsync() is { } line)
            {
                lock (_stderr) _stderr.Append(line).Append('\n');
                _line.Release();
            }
            _line.Release();
        });
    }

    public string CommandLine { get; }
    public int Pid => _process.Id;

    /// <summary>Waits until stderr has a line containing <paramref name="text"/>; throws with all output if the process ends first or time runs out.</summary>
    public async Task WaitForStderrAsync(string text, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            lock (_stderr) if (_stderr.ToString().Contains(text)) return;
            if (_stderrDone.IsCompleted) throw new InvalidOperationException($"{CommandLine} ended before writing '{text}' on stderr:\n{Stderr}");
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero) throw new TimeoutException($"{CommandLine} did not write '{text}' within {timeout.TotalSeconds:F0} s:\n{Stderr}");
            await _line.WaitAsync(left);
        }
    }

    public string Stderr { get { lock (_stderr) return _stderr.ToString(); } }

    /// <summary>kill(2): SIGINT 2, SIGKILL 9, SIGTERM 15, SIGHUP 1.</summary>
    public void Signal(int signal)
    {
        if (Kill(_process.Id, signal) != 0) throw new InvalidOperationException($"kill -{signal} {_process.Id} failed: errno {Marshal.GetLastPInvokeError()}");
    }

    public async Task<CliResult> WaitForExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try { await _process.WaitForExitAsync(cts.Token); }
        catch (OperationCanceledException)
        {
            _process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{CommandLine} did not exit within {timeout.TotalSeconds:F0} s:\n{Stderr}");
        }
        await _stderrDone;
        return new CliResult(CommandLine, _process.ExitCode, await _stdout, Stderr, _clock.Elapsed);
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    public void Dispose()
    {
        if (!_process.HasExited) _process.Kill(entireProcessTree: true);
        _process.Dispose();
    }
}
