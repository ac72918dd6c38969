using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;

namespace MergeCluster.Cluster.Tests.Infrastructure;

/// <summary>
/// A real Azurite (Microsoft's Azure Storage emulator, installed from npm by scripts/test.sh) on 127.0.0.1: free
/// ports chosen by the OS, a temporary --location, telemetry off, and an account of its own whose key is random, so
/// tests can prove the key never shows up anywhere. It can be killed and started again on the same location and ports.
/// </summary>
public sealed partial class Azurite : IAsyncDisposable
{
    public const string Account = "mergetest";

    private readonly TempDirectory _location = new("mergecluster-azurite");
    private Process? _process;
    private readonly StringBuilder _output = new();
    private int _blobPort, _queuePort, _tablePort;

    private Azurite()
    {
        Key = Convert.ToBase64String(RandomNumberGenerator.GetBytes(64));
    }

    /// <summary>The account key: a secret that must never appear in logs, status or traces.</summary>
    public string Key { get; }

    public string ConnectionString =>
        $"DefaultEndpointsProtocol=http;AccountName={Account};AccountKey={Key};BlobEndpoint=http://127.0.0.1:{_blobPort}/{Account};TableEndpoint=http://127.0.0.1:{_tablePort}/{Account}";

    public string Output
    {
        get { lock (_output) return _output.ToString(); }
    }

    /// <summary>One Azurite for the tests that do not stop it; each test uses its own cluster and service ids on it.</summary>
    public static Task<Azurite> Shared => LazyShared.Value;

    private static readonly Lazy<Task<Azurite>> LazyShared = new(StartAsync);

    public static async Task<Azurite> StartAsync()
    {
        var azurite = new Azurite();
        // The shared one lives as long as the test process: it must not outlive it.
        AppDomain.CurrentDomain.ProcessExit += (_, _) => azurite.Stop();
        await azurite.RunAsync(0, 0, 0);
        return azurite;
    }

    private void Stop()
    {
        try
        {
            if (_process is { HasExited: false } p) p.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
        }
        _location.Dispose();
    }

    /// <summary>The azurite executable: $MERGECLUSTER_AZURITE, else the one scripts/test.sh installed under .build/azurite.</summary>
    public static string Executable
    {
        get
        {
            if (Environment.GetEnvironmentVariable("MERGECLUSTER_AZURITE") is { Length: > 0 } configured) return configured;
            var installed = Path.Join(MergeClusterCli.RepositoryRoot, ".build", "azurite", "node_modules", ".bin", "azurite");
            if (File.Exists(installed)) return installed;
            throw new InvalidOperationException($"azurite is not installed: run `bash scripts/test.sh` once (it installs azurite 3.35.0 from npm into {installed}), or set MERGECLUSTER_AZURITE");
        }
    }

    private async Task RunAsync(int blobPort, int queuePort, int tablePort)
    {
        var info = new ProcessStartInfo(Executable)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[]
        {
            "--blobHost", "127.0.0.1", "--blobPort", blobPort.ToString(),
            "--queueHost", "127.0.0.1", "--queuePort", queuePort.ToString(),
            "--tableHost", "127.0.0.1", "--tablePort", tablePort.ToString(),
            "--location", _location.Path, "--disableTelemetry", "--skipApiVersionCheck", "--silent",
        })
        {
            info.ArgumentList.Add(arg);
        }
        info.Environment["AZURITE_ACCOUNTS"] = $"{Account}:{Key}";
        var process = Process.Start(info)!;
        process.OutputDataReceived += (_, e) => Append(e.Data);
        process.ErrorDataReceived += (_, e) => Append(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        _process = process;
        await Poll.UntilAsync(() =>
        {
            if (process.HasExited) throw new InvalidOperationException($"azurite exited ({process.ExitCode}):\n{Output}");
            return Listening().Count == 3;
        }, "azurite listens on its three ports");
        var ports = Listening();
        (_blobPort, _queuePort, _tablePort) = (ports["Blob"], ports["Queue"], ports["Table"]);
    }

    private Dictionary<string, int> Listening()
    {
        var ports = new Dictionary<string, int>();
        foreach (Match m in ListeningLine().Matches(Output)) ports[m.Groups[1].Value] = int.Parse(m.Groups[2].Value);
        return ports;
    }

    private void Append(string? line)
    {
        if (line is null) return;
        lock (_output) _output.AppendLine(line);
    }

    /// <summary>kill -9: storage is gone until <see cref="RestartAsync"/>.</summary>
    public async Task KillAsync()
    {
        if (_process is { HasExited: false } p)
        {
            p.Kill(entireProcessTree: true);
            await p.WaitForExitAsync();
        }
        lock (_output) _output.Clear();
    }

    /// <summary>Starts again on the same location and ports: the same storage account, with everything it held.</summary>
    public Task RestartAsync() => RunAsync(_blobPort, _queuePort, _tablePort);

    public async ValueTask DisposeAsync()
    {
        await KillAsync();
        _process?.Dispose();
        _location.Dispose();
    }

    [GeneratedRegex(@"Azurite (Blob|Queue|Table) service is successfully listening at http://127\.0\.0\.1:(\d+)")]
    private static partial Regex ListeningLine();
}
