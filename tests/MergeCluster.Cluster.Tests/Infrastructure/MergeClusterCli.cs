namespace MergeCluster.Cluster.Tests.Infrastructure;

/// <summary>
/// The built <c>mergecluster</c> CLI as a separate process. It is built once per test run through the repository's
/// ./mergecluster script (which rebuilds only when sources changed); processes then start the built dll directly.
/// </summary>
public static class MergeClusterCli
{
    private static readonly Lazy<Task<string>> Built = new(async () =>
    {
        var script = Path.Join(RepositoryRoot, "mergecluster");
        var result = await ProcessRunner.RunAsync("bash", [script, "--version"], timeout: TimeSpan.FromMinutes(10));
        if (result.ExitCode != 0) throw new InvalidOperationException($"building the CLI failed: {result.Output}");
        return Path.Join(RepositoryRoot, ".build", "cli", "mergecluster.dll");
    });

    /// <summary>The repository checkout the tests run from (the folder holding the ./mergecluster script).</summary>
    public static string RepositoryRoot { get; } = FindRoot();

    /// <summary>The path of mergecluster.dll, built if needed.</summary>
    public static Task<string> DllAsync() => Built.Value;

    /// <summary>Runs one command with <paramref name="environment"/> (storage and ids, as a deployment passes them, off the command line).</summary>
    public static async Task<ProcessRunner.Result> RunAsync(IReadOnlyDictionary<string, string>? environment, params string[] args)
    {
        var env = new Dictionary<string, string?>
        {
            ["OTEL_EXPORTER_OTLP_ENDPOINT"] = null,
            ["MERGECLUSTER_STORAGE"] = null,
            ["MERGECLUSTER_CLUSTER_ID"] = null,
            ["MERGECLUSTER_SERVICE_ID"] = null,
        };
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) env[key] = value;
        return await ProcessRunner.RunAsync("dotnet", [await DllAsync(), .. args], env);
    }

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Join(dir.FullName, "mergecluster")) && File.Exists(Path.Join(dir.FullName, "Cluster.sln"))) return dir.FullName;
        }
        throw new InvalidOperationException($"no repository root above {AppContext.BaseDirectory}");
    }
}
