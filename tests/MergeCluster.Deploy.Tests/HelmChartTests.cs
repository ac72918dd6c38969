using System.Text.Json.Nodes;
using MergeCluster.Deploy.Tests.Infrastructure;

namespace MergeCluster.Deploy.Tests;

/// <summary>
/// helm/mergecluster, with real Helm 3 and Helm 4 binaries: it lints, and for each values file it renders the very
/// objects of the matching kustomize install. Helm's own bookkeeping is left out of the comparison: the
/// helm.sh/chart and app.kubernetes.io/managed-by labels, helm.sh/* annotations, and the Namespace (helm install
/// --create-namespace makes it).
/// </summary>
public class HelmChartTests
{
    public static TheoryData<int, string?> Lint() => new()
    {
        { 3, null }, { 3, "ci/dev-values.yaml" }, { 3, "ci/production-values.yaml" },
        { 4, null }, { 4, "ci/dev-values.yaml" }, { 4, "ci/production-values.yaml" },
        { 4, "ci/keda-values.yaml" }, { 4, "ci/gpu-values.yaml" }, { 4, "ci/podmonitor-values.yaml" },
    };

    [Theory]
    [MemberData(nameof(Lint))]
    public void ChartLints(int helm, string? values)
    {
        var args = new List<string> { "lint", "--strict", Tool.RepoPath("helm/mergecluster") };
        if (values is not null) args.AddRange(["--values", Tool.RepoPath(Path.Combine("helm/mergecluster", values))]);
        Tool.Run(Tool.Helm(helm), args, environment: Manifest.HelmEnvironment()).Success();
    }

    public static TheoryData<int, string, string> Pairs() => new()
    {
        { 3, "", "deploy" },
        { 3, "ci/dev-values.yaml", "deploy/overlays/dev" },
        { 3, "ci/production-values.yaml", "deploy/overlays/production" },
        { 4, "", "deploy" },
        { 4, "ci/dev-values.yaml", "deploy/overlays/dev" },
        { 4, "ci/production-values.yaml", "deploy/overlays/production" },
        { 4, "ci/keda-values.yaml", "deploy/base+keda" },
        { 4, "ci/gpu-values.yaml", "deploy/base+gpu" },
        { 4, "ci/podmonitor-values.yaml", "deploy/base+prometheus-operator" },
    };

    [Theory]
    [MemberData(nameof(Pairs))]
    public void ChartRendersWhatKustomizeRenders(int helm, string values, string install)
    {
        var chart = helm == 4 ? Installs.Get(values == "" ? "helm" : $"helm {values}") : Manifest.Helm(helm, values == "" ? [] : [values]);
        var kustomize = Installs.Get(install);
        var fromChart = Comparable(chart);
        var fromKustomize = Comparable(kustomize);
        Assert.Equal(fromKustomize.Keys.Order(), fromChart.Keys.Order());
        foreach (var (key, expected) in fromKustomize)
            Assert.True(expected == fromChart[key], $"{key} differs between {kustomize.Source} and {chart.Source}:\n--- kustomize\n{expected}\n--- helm\n{fromChart[key]}");
    }

    // values.schema.json: a misspelt or out-of-range value fails the install instead of being ignored.
    [Theory]
    [InlineData("replica=3", "replica")]
    [InlineData("podAntiAffinity=medium", "podAntiAffinity")]
    [InlineData("autoscaling.minReplicas=0", "minReplicas")]
    [InlineData("silo.httpPort=70000", "httpPort")]
    public void ChartRefusesValuesOutsideItsSchema(string setting, string named)
    {
        foreach (int helm in new[] { 3, 4 })
        {
            var result = Tool.Run(Tool.Helm(helm), ["template", "mergecluster", Tool.RepoPath("helm/mergecluster"), "--set", setting],
                environment: Manifest.HelmEnvironment());
            Assert.NotEqual(0, result.ExitCode);
            Assert.Contains(named, result.Stderr);
        }
    }

    [Fact]
    public void ChartRefusesAStorageStringWithAzurite()
    {
        var result = Tool.Run(Tool.Helm(4), ["template", "mergecluster", Tool.RepoPath("helm/mergecluster"), "--set", "azurite.enabled=true", "--set", "storage.connectionString=x"],
            environment: Manifest.HelmEnvironment());
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("either storage.connectionString or azurite.enabled", result.Stderr);
    }

    [Fact]
    public void ChartMakesTheStorageSecretFromAGivenConnectionString()
    {
        string yaml = Tool.Run(Tool.Helm(4), ["template", "mergecluster", Tool.RepoPath("helm/mergecluster"), "-n", "mergecluster",
            "--set", "storage.connectionString=DefaultEndpointsProtocol=https;AccountName=a"], environment: Manifest.HelmEnvironment()).Success();
        var manifest = Manifest.Validate("helm --set storage.connectionString", yaml);
        Assert.Equal("DefaultEndpointsProtocol=https;AccountName=a", (string?)manifest.Get("Secret", "mergecluster-storage")["stringData"]!["connection-string"]);
    }

    private static Dictionary<string, string> Comparable(Manifest manifest) =>
        manifest.Objects.Where(o => (string?)o["kind"] != "Namespace").ToDictionary(Manifest.Describe, o =>
        {
            var copy = o.DeepClone().AsObject();
            foreach (var metadata in new[] { copy["metadata"], copy["spec"]?["template"]?["metadata"] }.OfType<JsonObject>())
            {
                if (metadata["labels"] is JsonObject labels)
                {
                    labels.Remove("helm.sh/chart");
                    labels.Remove("app.kubernetes.io/managed-by");
                }
                if (metadata["annotations"] is JsonObject annotations)
                {
                    foreach (var key in annotations.Select(a => a.Key).Where(k => k.StartsWith("helm.sh/", StringComparison.Ordinal)).ToList())
                        annotations.Remove(key);
                    if (annotations.Count == 0) metadata.Remove("annotations");
                }
            }
            return Manifest.Canonical(copy);
        });
}
