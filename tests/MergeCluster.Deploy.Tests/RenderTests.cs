using MergeCluster.Deploy.Tests.Infrastructure;

namespace MergeCluster.Deploy.Tests;

/// <summary>Every install renders, and every object it renders is valid for its API.</summary>
public class RenderTests
{
    [Theory]
    [MemberData(nameof(Installs.Names), MemberType = typeof(Installs))]
    public void InstallRendersValidObjects(string install)
    {
        var manifest = Installs.Get(install);
        Assert.NotNull(Installs.SiloDeployment(manifest));
        Assert.All(manifest.Objects.Where(o => (string?)o["kind"] != "Namespace"),
            o => Assert.Equal("mergecluster", (string?)o["metadata"]?["namespace"]));
    }

    [Fact]
    public void SubmitJobRendersValidObjects()
    {
        var manifest = Manifest.Kustomize("deploy/submit");
        Assert.Single(manifest.OfKind("Job"));
        Assert.Single(manifest.OfKind("ConfigMap"));
    }

    [Fact]
    public void LoaderPodMountsTheSharedVolume()
    {
        var manifest = Manifest.Kustomize("deploy/loader");
        var pod = manifest.Get("Pod", "mergecluster-loader");
        Assert.Equal("mergecluster", (string?)pod["metadata"]!["namespace"]);
        var claim = pod["spec"]!["volumes"]!.AsArray().Select(v => (string?)v!["persistentVolumeClaim"]?["claimName"]).Single(c => c is not null);
        Assert.Equal("mergecluster-data", claim);
        // It writes as the silos' user, so the silos can read and replace what it puts there.
        var silo = Installs.SiloDeployment(Installs.Get("deploy"))["spec"]!["template"]!["spec"]!["securityContext"]!;
        Assert.Equal((int?)silo["runAsUser"], (int?)pod["spec"]!["securityContext"]!["runAsUser"]);
        Assert.Equal((int?)silo["fsGroup"], (int?)pod["spec"]!["securityContext"]!["fsGroup"]);
    }

    // The validator itself: each way a manifest can be wrong is caught, so the tests above can fail.
    [Theory]
    [InlineData("readinessProbe:", "readinesProbe:", "readinesProbe")]                     // an unknown field (strict loading)
    [InlineData("maxUnavailable: 1", "maxUnavailable: true", "maxUnavailable")]             // a wrong type (schema)
    [InlineData("\n        name: silo\n", "\n        nam: silo\n", "required property name")]   // a container without its name (schema)
    [InlineData("type: RollingUpdate", "type: Rolling", "type")]                            // a value outside an enum (schema)
    public void ValidatorRefusesBrokenObjects(string good, string bad, string named)
    {
        string yaml = Tool.Run(Tool.Kubectl, ["kustomize", Tool.RepoPath("deploy")]).Success();
        Assert.Contains(good, yaml);
        Manifest.Validate("deploy", yaml);
        var error = Assert.Throws<InvalidOperationException>(() => Manifest.Validate("broken", ReplaceFirst(yaml, good, bad)));
        Assert.Contains(named, error.Message);
    }

    [Fact]
    public void ValidatorRefusesBrokenScaledObjects()
    {
        string yaml = Tool.Run(Tool.Kubectl, ["kustomize", Tool.RepoPath("deploy/overlays/production")]).Success();
        var error = Assert.Throws<InvalidOperationException>(() => Manifest.Validate("broken", ReplaceFirst(yaml, "minReplicaCount: 1", "minReplicaCount: one")));
        Assert.Contains("ScaledObject/mergecluster-silo", error.Message);
    }

    [Fact]
    public void ValidatorRefusesKindsItHasNoSchemaFor()
    {
        var error = Assert.Throws<InvalidOperationException>(() => Manifest.Validate("unknown",
            "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n"));
        Assert.Contains("no schema for example.com/v1 Widget", error.Message);
    }

    private static string ReplaceFirst(string text, string from, string to)
    {
        int at = text.IndexOf(from, StringComparison.Ordinal);
        Assert.True(at >= 0, $"'{from}' not in the rendering");
        return string.Concat(text.AsSpan(0, at), to, text.AsSpan(at + from.Length));
    }
}
