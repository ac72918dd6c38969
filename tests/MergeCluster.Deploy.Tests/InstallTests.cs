using System.Globalization;
using System.Text.Json.Nodes;
using MergeCluster.Deploy.Tests.Infrastructure;

namespace MergeCluster.Deploy.Tests;

/// <summary>What each install adds: the autoscaler, Azurite, production sizing, GPU placement, the submit Job.</summary>
public class InstallTests
{
    public static TheoryData<string, bool> Autoscaled() => new()
    {
        { "deploy", false },
        { "deploy/overlays/dev", false },
        { "deploy/overlays/production", true },
        { "deploy/base+keda", true },
        { "helm", false },
        { "helm ci/keda-values.yaml", true },
        { "helm ci/production-values.yaml", true },
    };

    [Theory]
    [MemberData(nameof(Autoscaled))]
    public void KedaScalesTheSilosOnPendingTasks(string install, bool autoscaled)
    {
        var manifest = Installs.Get(install);
        var replicas = Installs.SiloDeployment(manifest)["spec"]!["replicas"];
        var scaled = manifest.Find("ScaledObject", "mergecluster-silo");
        if (!autoscaled)
        {
            Assert.Null(scaled);
            Assert.True((int?)replicas >= 1);
            return;
        }
        Assert.NotNull(scaled);
        // The autoscaler owns the replica count; a Deployment that states one would reset it on every apply.
        Assert.Null(replicas);
        var spec = scaled["spec"]!;
        Assert.Equal("Deployment", (string?)spec["scaleTargetRef"]!["kind"]);
        Assert.Equal("mergecluster-silo", (string?)spec["scaleTargetRef"]!["name"]);
        // Clients reach the cluster through a silo's gateway: scaling to zero would leave nothing to submit to.
        Assert.True((int?)spec["minReplicaCount"] >= 1);
        Assert.True((int?)spec["maxReplicaCount"] >= (int?)spec["minReplicaCount"]);
        var trigger = Assert.Single(spec["triggers"]!.AsArray())!;
        Assert.Equal("prometheus", (string?)trigger["type"]);
        Assert.Equal("AverageValue", (string?)trigger["metricType"]);
        string query = (string)trigger["metadata"]!["query"]!;
        // Each gauge summed with a 0 fallback: `a + b` is empty, and reads as "no work", when either has no series.
        Assert.Contains($"(sum({SiloContract.PendingTasksMetric}{{namespace=\"mergecluster\"}}) or vector(0))", query);
        Assert.Contains($"(sum({SiloContract.RunningTasksMetric}{{namespace=\"mergecluster\"}}) or vector(0))", query);
        Assert.True(double.Parse((string)trigger["metadata"]!["threshold"]!, CultureInfo.InvariantCulture) > 0);
        Assert.StartsWith("http", (string?)trigger["metadata"]!["serverAddress"]);
        // Scale-in waits and goes one silo at a time: each drains before the next.
        var down = spec["advanced"]!["horizontalPodAutoscalerConfig"]!["behavior"]!["scaleDown"]!;
        Assert.True((int?)down["stabilizationWindowSeconds"] >= 60);
        Assert.Equal(1, (int?)Assert.Single(down["policies"]!.AsArray())!["value"]);
    }

    [Theory]
    [InlineData("deploy/overlays/dev")]
    [InlineData("helm ci/dev-values.yaml")]
    public void DevRunsAzuriteInTheNamespace(string install)
    {
        var manifest = Installs.Get(install);
        var azurite = manifest.Get("Deployment", "mergecluster-azurite");
        var container = Installs.Container(azurite, "azurite");
        Assert.Equal("mcr.microsoft.com/azure-storage/azurite:3.35.0", (string?)container["image"]);
        var args = Installs.Args(container);
        Assert.Contains("--disableTelemetry", args);
        Assert.Contains("--skipApiVersionCheck", args);
        Assert.Contains(args, a => a.StartsWith("--location=", StringComparison.Ordinal));

        // The silos' connection string names the Azurite Service's ports, each of which reaches its container port.
        var service = manifest.Get("Service", "mergecluster-azurite");
        Assert.True(Installs.Selects(service["spec"]!["selector"], azurite["spec"]!["template"]!["metadata"]!["labels"]));
        var key = Installs.Env(Installs.SiloContainer(manifest), SiloContract.StorageVariable)!["valueFrom"]!["secretKeyRef"]!;
        string connection = (string)manifest.Get("Secret", (string)key["name"]!)["stringData"]![(string)key["key"]!]!;
        foreach (var (endpoint, port) in new[] { ("BlobEndpoint", "blob"), ("QueueEndpoint", "queue"), ("TableEndpoint", "table") })
        {
            var servicePort = service["spec"]!["ports"]!.AsArray().Single(p => (string?)p!["name"] == port)!;
            Assert.Contains($"{endpoint}=http://mergecluster-azurite:{(int)servicePort["port"]!}/devstoreaccount1;", connection);
            Assert.Equal((int)servicePort["port"]!, Installs.ResolvePort(container, servicePort["targetPort"]!));
        }
        Assert.Contains("--blobHost=0.0.0.0", args);
        Assert.Contains("--tableHost=0.0.0.0", args);
    }

    [Theory]
    [InlineData("deploy/overlays/production")]
    [InlineData("helm ci/production-values.yaml")]
    public void ProductionPinsOneSiloPerNodeOnASharedStorageClass(string install)
    {
        var manifest = Installs.Get(install);
        var deployment = Installs.SiloDeployment(manifest);
        Assert.NotNull(deployment["spec"]!["template"]!["spec"]!["affinity"]!["podAntiAffinity"]!["requiredDuringSchedulingIgnoredDuringExecution"]);
        Assert.False(string.IsNullOrEmpty((string?)manifest.Get("PersistentVolumeClaim", "mergecluster-data")["spec"]!["storageClassName"]));
        Assert.DoesNotContain(manifest.Objects, o => (string?)o["kind"] == "Secret");
        var resources = Installs.SiloContainer(manifest)["resources"]!;
        // Guaranteed QoS (CPU and memory requested as limited): the last pods a node under pressure evicts.
        foreach (var resource in new[] { "cpu", "memory" })
            Assert.Equal((string?)resources["limits"]![resource], (string?)resources["requests"]![resource]);
        Assert.DoesNotContain(":dev", (string)Installs.SiloContainer(manifest)["image"]!);
    }

    [Theory]
    [InlineData("deploy/base+gpu")]
    [InlineData("helm ci/gpu-values.yaml")]
    public void GpuPlacementAddsNodeSelectorAndToleration(string install)
    {
        var spec = Installs.SiloDeployment(Installs.Get(install))["spec"]!["template"]!["spec"]!;
        Assert.Equal("true", (string?)spec["nodeSelector"]?["nvidia.com/gpu.present"]);
        var toleration = Assert.Single(spec["tolerations"]!.AsArray())!;
        Assert.Equal("nvidia.com/gpu", (string?)toleration["key"]);
        Assert.Equal("NoSchedule", (string?)toleration["effect"]);
        Assert.Null(Installs.Get("deploy").Get("Deployment", "mergecluster-silo")["spec"]!["template"]!["spec"]!["nodeSelector"]);
    }

    [Theory]
    [InlineData("deploy/base+prometheus-operator")]
    [InlineData("helm ci/podmonitor-values.yaml")]
    public void PodMonitorScrapesTheSilosHttpPort(string install)
    {
        var manifest = Installs.Get(install);
        var monitor = manifest.Get("PodMonitor", "mergecluster-silo");
        Assert.True(Installs.Selects(monitor["spec"]!["selector"]!["matchLabels"], Installs.SiloDeployment(manifest)["spec"]!["template"]!["metadata"]!["labels"]));
        var endpoint = Assert.Single(monitor["spec"]!["podMetricsEndpoints"]!.AsArray())!;
        Assert.Equal(SiloContract.Metrics, (string?)endpoint["path"]);
        Installs.ResolvePort(Installs.SiloContainer(manifest), endpoint["port"]!);
    }

    [Fact]
    public void SubmitJobSubmitsTheRecipeOnceAndWaits()
    {
        var manifest = Manifest.Kustomize("deploy/submit");
        var job = Assert.Single(manifest.OfKind("Job"));
        Assert.Equal(0, (int?)job["spec"]!["backoffLimit"]);
        Assert.Equal("Never", (string?)job["spec"]!["template"]!["spec"]!["restartPolicy"]);
        var container = Installs.Container(job, "submit");
        var args = Installs.Args(container);
        Assert.Equal("submit", args[0]);
        Assert.Contains("--wait", args);
        Assert.All(SiloContract.Parse(args, SiloContract.SubmitOptions.ToDictionary(o => o, o => o is not "--wait" and not "--no-hash")),
            o => Assert.Contains(o.Option, SiloContract.SubmitOptions));

        // The recipe is the ConfigMap's file, mounted where the argument points.
        string recipe = args[1];
        var mount = container["volumeMounts"]!.AsArray().Single(m => recipe.StartsWith((string)m!["mountPath"]! + "/", StringComparison.Ordinal))!;
        var volume = job["spec"]!["template"]!["spec"]!["volumes"]!.AsArray().Single(v => (string?)v!["name"] == (string?)mount["name"])!;
        var configMap = manifest.Get("ConfigMap", (string)volume["configMap"]!["name"]!);
        string file = recipe[((string)mount["mountPath"]!).Length..].TrimStart('/');
        string text = (string)configMap["data"]![file]!;
        Assert.Equal(File.ReadAllText(Tool.RepoPath("deploy/submit/recipe.yaml")), text);
        // The silos open the recipe's paths, under their data root; the recipe's own directory is not on the volume.
        foreach (var line in text.Split('\n').Where(l => l.Contains(".safetensors", StringComparison.Ordinal)))
            Assert.Matches(@"(:|path:)\s+/data/", line);

        // The same storage and cluster as the silos.
        var silo = Installs.SiloContainer(Installs.Get("deploy"));
        Assert.Equal(Manifest.Canonical(Installs.Env(silo, SiloContract.StorageVariable)), Manifest.Canonical(Installs.Env(container, SiloContract.StorageVariable)));
        var siloOptions = SiloContract.Parse(Installs.Args(silo), SiloContract.Options);
        var submitOptions = SiloContract.Parse(args, SiloContract.SubmitOptions.ToDictionary(o => o, o => o is not "--wait" and not "--no-hash"));
        foreach (var id in new[] { "--cluster-id", "--service-id" })
            Assert.Equal(siloOptions.Single(o => o.Option == id).Value, submitOptions.Single(o => o.Option == id).Value);
    }
}
