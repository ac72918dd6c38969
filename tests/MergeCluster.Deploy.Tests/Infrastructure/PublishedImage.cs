namespace MergeCluster.Deploy.Tests.Infrastructure;

/// <summary>
/// What the image ships under /app: the CLI published by deploy/publish.sh exactly as the Dockerfile runs it, once
/// per test run (publishing is minutes of work), into .build/deploy-tests under the checkout, replacing the last run's.
/// A temporary directory removed by an exit handler leaked 250-400 MB per run (eight runs left
/// eight). MERGECLUSTER_PUBLISHED_APP names one already published instead.
/// </summary>
internal static class PublishedImage
{
    private static readonly Lazy<string> Published = new(() =>
    {
        // Iterating on the tests: a directory deploy/publish.sh already made stands in for this run's publish.
        if (Environment.GetEnvironmentVariable("MERGECLUSTER_PUBLISHED_APP") is { Length: > 0 } given) return given;
        string work = Tool.RepoPath(".build/deploy-tests");
        if (Directory.Exists(work)) Directory.Delete(work, recursive: true);
        Directory.CreateDirectory(work);
        string app = Path.Combine(work, "app");
        Tool.Run(Tool.RepoPath("deploy/publish.sh"), [app], environment: new Dictionary<string, string> { ["MERGECLUSTER_PUBLISH_ARTIFACTS"] = Path.Combine(work, "artifacts") },
            timeout: TimeSpan.FromMinutes(10)).Success();
        return app;
    }, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The published directory (the image's /app).</summary>
    public static string App => Published.Value;

    public static readonly Dockerfile Dockerfile = Dockerfile.Load(Tool.RepoPath("deploy/Dockerfile"));
}
