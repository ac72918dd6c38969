using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;

namespace MergeCluster.Cluster.Tests.Infrastructure;

/// <summary>
/// A real <c>mergecluster silo</c> process: started with the storage in its environment, its stdout and stderr captured,
/// and stopped the ways a cluster loses members: <see cref="Kill"/> (kill -9) or <see cref="Terminate"/> (SIGTERM, a drain).
/// </summary>
public sealed partial class SiloProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();

    public string Name { get; }
    public int Pid => _process.Id;
    public bool HasExited => _process.HasExited;

    /// <summary>Everything the silo wrote so far, stdout and stderr interleaved by line.</summary>
    public string Output
    {
        get { lock (_output) return _output.ToString(); }
    }

    private SiloProcess(Process process, string name)
    {
        _process = process;
        Name = name;
    }

    /// <summary>Starts <c>mergecluster silo --name NAME [args...]</c> with <paramref name="environment"/> (storage, ids, OTEL_*) set.</summary>
    public static async Task<SiloProcess> StartAsync(string name, IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var info = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[] { await MergeClusterCli.DllAsync(), "silo", "--name", name }.Concat(args)) info.ArgumentList.Add(arg);
        info.Environment.Remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        foreach (var (key, value) in environment) info.Environment[key] = value;
        var process = Process.Start(info)!;
        var silo = new SiloProcess(process, name);
        process.OutputDataReceived += (_, e) => silo.Append(e.Data);
        process.ErrorDataReceived += (_, e) => silo.Append(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return silo;
    }

    private void Append(string? line)
    {
        if (line is null) return;
        lock (_output) _output.AppendLine(line);
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
    public void Terminate()
    {
        if (SendSignal(Pid, 15) != 0) throw new InvalidOperationException($"kill -TERM {Pid} failed: errno {Marshal.GetLastPInvokeError()}");
    }

    /// <summary>kill -STOP / -CONT: the silo freezes (mid-task) and thaws.</summary>
    public void Freeze() => Signal(19);
    public void Thaw() => Signal(18);

    private void Signal(int signal)
    {
        if (SendSignal(Pid, signal) != 0) throw new InvalidOperationException($"kill -{signal} {Pid} failed: errno {Marshal.GetLastPInvokeError()}");
    }

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

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int SendSignal(int pid, int signal);
}
