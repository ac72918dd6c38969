using MergeCluster.Deploy.Tests.Infrastructure;

namespace MergeCluster.Deploy.Tests;

/// <summary>
/// The manifests against the silo itself rather than its contract. Skipped until `mergecluster silo --help` lists
/// --http-port (the Orleans silo with its HTTP endpoint, issue #12 item 1); from then on it runs by itself. The step
/// that adds the endpoint also adds the live check here: a silo started with the manifest's arguments against
/// Azurite answers /healthz, then /readyz once it has joined, and /metrics with the autoscaler's gauges.
/// </summary>
public class SiloHelpTests
{
    [SkippableFact]
    public void ManifestsPassOnlyOptionsTheSiloTakes()
    {
        var help = Tool.Run(Tool.RepoPath("mergecluster"), ["silo", "--help"], timeout: TimeSpan.FromMinutes(10)).Success();
        Skip.IfNot(help.Contains("--http-port", StringComparison.Ordinal), "the silo has no --http-port yet (issue #12 item 1)");

        foreach (var option in SiloContract.Options.Keys)
            Assert.True(help.Contains(option, StringComparison.Ordinal), $"`silo --help` does not list the contract's {option}");
        foreach (var install in new[] { "deploy", "deploy/overlays/production", "helm" })
            foreach (var (option, _) in SiloContract.Parse(Installs.Args(Installs.SiloContainer(Installs.Get(install))), SiloContract.Options))
                Assert.True(help.Contains(option, StringComparison.Ordinal), $"{install} passes {option}, which `silo --help` does not list");
    }
}
