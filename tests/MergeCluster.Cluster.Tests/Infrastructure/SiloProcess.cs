using System.Diagnostics;
using System.Text;

namespace MergeCluster.Cluster.Tests.Infrastructure;

/// <summary>
/// A real <c>mergecluster silo</c> process: started with the storage in its environment, its stdout and stderr captured,
/// and stopped the ways a cluster loses members: <see cref="Kill"/> (kill -9) or <see cref="Terminate"/> (SIGTERM, a drain).
/// </summary>
public sealed class SiloProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly Func<Process, int> _silo;
    private readonly StringBuilder _output = new();
    private readonly List<(Func<string, bool> Matches, Action Act)> _triggers = [];

    public string Name { get; }
    /// <summary>The silo's own process: the one started, or the one a launcher (a sandbox) started for it.</summary>
    public int Pid => _silo(_process);
    public bool HasExited => _process.HasExited;

    /// <summary>Everything the silo wrote so far, stdout and stderr interleaved by line.</summary>
    public string Output
    {
        get { lock (_output) return _output.ToString(); }
    }

    private SiloProcess(Process process, string name, Func<Process, int>? findSilo)
    {
        _process = process;
        _silo = findSilo ?? (p => p.Id);
        Name = name;
    }

    /// <summary>Starts <c>mergecluster silo --name NAME [args...]</c> with <paramref name="environment"/> (storage, ids, OTEL_*) set.</summary>
    public static async Task<SiloProcess> StartAsync(string name, IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var info = new ProcessStartInfo("dotnet");
        foreach (var arg in new[] { await MergeClusterCli.DllAsync(), "silo", "--name", name }.Concat(args)) info.ArgumentList.Add(arg);
        info.Environment.Remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        foreach (var (key, value) in environment) info.Environment[key] = value;
        return Start(info, name);
    }

    private static SiloProcess Start(ProcessStartInfo info, string name)
    {
        info.RedirectStandardOutput = info.RedirectStandardError = true;
        info.UseShellExecute = false;
        return Attach(Process.Start(info)!, name);
    }

    /// <summary>
    /// A silo some launcher started (a sandbox that runs it, for instance), with its stdout and stderr redirected: its
    /// output is captured from here on. <paramref name="findSilo"/> finds the silo's own process from the one
    /// started, for signals; default: that one.
    /// </summary>
    public static SiloProcess Attach(Process process, string name, Func<Process, int>? findSilo = null)
    {
        var silo = new SiloProcess(process, name, findSilo);
        process.OutputDataReceived += (_, e) => silo.Append(e.Data);
        process.ErrorDataReceived += (_, e) => silo.Append(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return silo;
    }

    private void Append(string? line)
    {
        if (line is null) return;
        var fired = new List<Action>();
        lock (_output)
        {
            _output.AppendLine(line);
            for (int i = _triggers.Count - 1; i >= 0; i--)
            {
                if (!_triggers[i].Matches(line)) continue;
                fired.Add(_triggers[i].Act);
                _triggers.RemoveAt(i);
            }
        }
        foreach (var act in fired) act();
    }

    /// <summary>
    /// Runs <paramref name="act"/> once, on the reader's thread, the moment the silo writes a line that matches: to
    /// step in between two of its steps without polling for it. Lines written before the call do not count.
    /// </summary>
    public void OnLine(Func<string, bool> matches, Action act)
    {
        lock (_output) _triggers.Add((matches, act));
    }

    /// <summary>Waits until the silo has written <paramref name="text"/>; fails with its output if it exits first.</summary>
    public Task WaitForOutputAsync(string text, TimeSpan? timeout = null) =>
        Poll.UntilAsync(() =>
        {
            if (Output.Contains(text, StringComparison.Ordinal)) return true;
            if (HasExited) throw new InvalidOperationException($"silo {Name} exited ({_process.ExitCode}) before writing '{text}':\n{Output}");
            return false;
        }, $"silo {Name} writes '{text}'\n{Output}", timeout);

    /// <summary>kill -9: no drain, no goodbye; the cluster must notice the silo is gone.</summary>
    public void Kill() => _process.Kill();

    /// <summary>SIGTERM, as Kubernetes sends on scale-in: the silo drains and exits.</summary>
    public void Terminate() => Signals.Send(Pid, Signals.Term);

    /// <summary>kill -STOP / -CONT: the silo freezes (mid-task) and thaws.</summary>
    public void Freeze() => Signals.Send(Pid, Signals.Stop);
    public void Thaw() => Signals.Send(Pid, Signals.Continue);

    public async Task<int> WaitForExitAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? Poll.Long);
        await _process.WaitForExitAsync(cts.Token);
        _process.WaitForExit();
        return _process.ExitCode;
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            Thaw();
            _process.Kill();
            await _process.WaitForExitAsync();
        }
        _process.Dispose();
    }

}
