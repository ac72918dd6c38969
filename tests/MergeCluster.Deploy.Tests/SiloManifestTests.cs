using System.Text.Json.Nodes;
using MergeCluster.Deploy.Tests.Infrastructure;

namespace MergeCluster.Deploy.Tests;

/// <summary>
/// The silo pods of every install run `mergecluster silo` as its contract defines it: probes on the HTTP endpoint's
/// paths and port, ports and options it takes, storage from a Secret, name and IP from the Downward API, a
/// drain-long grace period, restricted pod security, and Services and budgets that select exactly the silos.
/// </summary>
public class SiloManifestTests
{
    [Theory]
    [MemberData(nameof(Installs.Names), MemberType = typeof(Installs))]
    public void ProbesAreTheSilosHttpEndpoints(string install)
    {
        var container = Installs.SiloContainer(Installs.Get(install));
        int httpPort = int.Parse(SingleValue(container, "--http-port"));

        Probe(container, "readinessProbe", SiloContract.Readiness, httpPort);
        Probe(container, "livenessProbe", SiloContract.Liveness, httpPort);
        Probe(container, "startupProbe", SiloContract.Liveness, httpPort);

        var annotations = Installs.SiloDeployment(Installs.Get(install))["spec"]!["template"]!["metadata"]!["annotations"]!;
        Assert.Equal(httpPort.ToString(), (string?)annotations["prometheus.io/port"]);
        Assert.Equal(SiloContract.Metrics, (string?)annotations["prometheus.io/path"]);
    }

    [Theory]
    [MemberData(nameof(Installs.Names), MemberType = typeof(Installs))]
    public void ArgumentsAreSiloOptions(string install)
    {
        var manifest = Installs.Get(install);
        var deployment = Installs.SiloDeployment(manifest);
        var container = Installs.SiloContainer(manifest);
        var args = Installs.Args(container);
        Assert.Equal("silo", args.FirstOrDefault());

        var options = SiloContract.Parse(args, SiloContract.Options);
        Assert.All(options, o => Assert.True(SiloContract.Options.ContainsKey(o.Option), $"{install}: `silo {o.Option}` is not a silo option"));
        Assert.All(options, o => Assert.Equal(SiloContract.Options[o.Option], o.Value is not null));

        Assert.Equal(int.Parse(SingleValue(container, "--silo-port", SiloContract.DefaultSiloPort.ToString())), Installs.ResolvePort(container, "silo"));
        Assert.Equal(int.Parse(SingleValue(container, "--gateway-port", SiloContract.DefaultGatewayPort.ToString())), Installs.ResolvePort(container, "gateway"));
        Assert.Equal(int.Parse(SingleValue(container, "--http-port")), Installs.ResolvePort(container, "http"));

        // Orleans' pod labels name the cluster the silo joins.
        var labels = deployment["spec"]!["template"]!["metadata"]!["labels"]!;
        Assert.Equal(SingleValue(container, "--cluster-id", SiloContract.DefaultClusterId), (string?)labels["orleans/clusterId"]);
        Assert.Equal(SingleValue(container, "--service-id", SiloContract.DefaultServiceId), (string?)labels["orleans/serviceId"]);

        // Every data root is the shared volume's mount, and the volume is a claim this install makes.
        var roots = options.Where(o => o.Option == "--data-root").Select(o => o.Value!).ToList();
        Assert.NotEmpty(roots);
        var podSpec = deployment["spec"]!["template"]!["spec"]!;
        foreach (var root in roots)
        {
            var mount = container["volumeMounts"]!.AsArray().SingleOrDefault(m => (string?)m!["mountPath"] == root)
                ?? throw new Xunit.Sdk.XunitException($"{install}: data root {root} is not a mount");
            Assert.Null(mount["readOnly"]);
            var volume = podSpec["volumes"]!.AsArray().Single(v => (string?)v!["name"] == (string?)mount["name"])!;
            string claim = (string)volume["persistentVolumeClaim"]!["claimName"]!;
            manifest.Get("PersistentVolumeClaim", claim);
        }
    }

    [Theory]
    [MemberData(nameof(Installs.Names), MemberType = typeof(Installs))]
    public void EnvironmentGivesStorageNameAndAddress(string install)
    {
        var manifest = Installs.Get(install);
        var container = Installs.SiloContainer(manifest);
        Assert.DoesNotContain(SiloContract.Parse(Installs.Args(container), SiloContract.Options), o => o.Option == "--storage");

        var storage = Installs.Env(container, SiloContract.StorageVariable)?["valueFrom"]?["secretKeyRef"]
            ?? throw new Xunit.Sdk.XunitException($"{install}: {SiloContract.StorageVariable} does not come from a Secret");
        Assert.Null(Installs.Env(container, SiloContract.StorageVariable)!["value"]);
        // An install that makes the Secret (dev: Azurite) must make it with that key.
        var secret = manifest.Find("Secret", (string)storage["name"]!);
        if (secret is not null) Assert.NotNull(secret["stringData"]?[(string)storage["key"]!] ?? secret["data"]?[(string)storage["key"]!]);

        Assert.Equal("metadata.name", (string?)Installs.Env(container, SiloContract.NameVariable)?["valueFrom"]?["fieldRef"]?["fieldPath"]);
        Assert.Equal("status.podIP", (string?)Installs.Env(container, SiloContract.AdvertisedIpVariable)?["valueFrom"]?["fieldRef"]?["fieldPath"]);
        Assert.Equal("metadata.namespace", (string?)Installs.Env(container, "POD_NAMESPACE")?["valueFrom"]?["fieldRef"]?["fieldPath"]);
    }

    [Theory]
    [MemberData(nameof(Installs.Names), MemberType = typeof(Installs))]
    public void PodsMeetTheRestrictedPodSecurityStandard(string install)
    {
        foreach (var (owner, spec, _) in Installs.Get(install).PodTemplates()) RestrictedPod(Manifest.Describe(owner), spec);
    }

    [Theory]
    [InlineData("deploy/submit")]
    [InlineData("deploy/loader")]
    public void ToolPodsMeetTheRestrictedPodSecurityStandard(string install)
    {
        var pods = Manifest.Kustomize(install).PodTemplates().ToList();
        Assert.NotEmpty(pods);
        foreach (var (owner, spec, _) in pods) RestrictedPod(Manifest.Describe(owner), spec);
    }

    [Theory]
    [MemberData(nameof(Installs.Names), MemberType = typeof(Installs))]
    public void GracePeriodLetsASiloDrain(string install)
    {
        // SIGTERM drains: running tasks finish or are handed back and job grains move, which includes a job's
        // final verify and fsync of a 7 GB output on a shared volume. Kubernetes' default 30 s cuts that off.
        var spec = Installs.SiloDeployment(Installs.Get(install))["spec"]!;
        Assert.True((int?)spec["template"]!["spec"]!["terminationGracePeriodSeconds"] >= 120, $"{install}: terminationGracePeriodSeconds under 120");
        // A rollout starts a silo before it stops one.
        Assert.Equal(0, (int?)spec["strategy"]?["rollingUpdate"]?["maxUnavailable"]);
    }

    [Theory]
    [MemberData(nameof(Installs.Names), MemberType = typeof(Installs))]
    public void ServicesBudgetAndAntiAffinitySelectTheSilos(string install)
    {
        var manifest = Installs.Get(install);
        var deployment = Installs.SiloDeployment(manifest);
        var container = Installs.SiloContainer(manifest);
        var podLabels = deployment["spec"]!["template"]!["metadata"]!["labels"];
        Assert.True(Installs.Selects(deployment["spec"]!["selector"]!["matchLabels"], podLabels));

        var gateway = manifest.Get("Service", "mergecluster-gateway");
        Assert.Equal("None", (string?)gateway["spec"]!["clusterIP"]);
        ServicePort(container, gateway, "gateway", int.Parse(SingleValue(container, "--gateway-port", SiloContract.DefaultGatewayPort.ToString())));
        ServicePort(container, gateway, "silo", int.Parse(SingleValue(container, "--silo-port", SiloContract.DefaultSiloPort.ToString())));
        var http = manifest.Get("Service", "mergecluster-http");
        ServicePort(container, http, "http", int.Parse(SingleValue(container, "--http-port")));
        foreach (var service in new[] { gateway, http })
            Assert.True(Installs.Selects(service["spec"]!["selector"], podLabels), $"{Manifest.Describe(service)} does not select the silos");

        var budget = manifest.Get("PodDisruptionBudget", "mergecluster-silo");
        Assert.True(Installs.Selects(budget["spec"]!["selector"]!["matchLabels"], podLabels));
        Assert.Equal(1, (int?)budget["spec"]!["maxUnavailable"]);

        // No other pod of the install is mistaken for a silo.
        foreach (var (owner, _, metadata) in manifest.PodTemplates().Where(p => p.Owner != deployment))
            Assert.False(Installs.Selects(budget["spec"]!["selector"]!["matchLabels"], metadata["labels"]), $"the silo budget selects {Manifest.Describe(owner)}");

        var antiAffinity = deployment["spec"]!["template"]!["spec"]!["affinity"]?["podAntiAffinity"]
            ?? throw new Xunit.Sdk.XunitException($"{install}: the silos have no pod anti-affinity");
        var terms = (antiAffinity["requiredDuringSchedulingIgnoredDuringExecution"]?.AsArray() ?? [])
            .Concat(antiAffinity["preferredDuringSchedulingIgnoredDuringExecution"]?.AsArray().Select(p => p!["podAffinityTerm"]) ?? []).ToList();
        Assert.NotEmpty(terms);
        Assert.All(terms, t =>
        {
            Assert.Equal("kubernetes.io/hostname", (string?)t!["topologyKey"]);
            Assert.True(Installs.Selects(t["labelSelector"]!["matchLabels"], podLabels));
        });
    }

    [Theory]
    [MemberData(nameof(Installs.Names), MemberType = typeof(Installs))]
    public void SharedVolumeIsReadWriteManyWhereSilosSpanNodes(string install)
    {
        var manifest = Installs.Get(install);
        var claim = manifest.Get("PersistentVolumeClaim", "mergecluster-data");
        var modes = claim["spec"]!["accessModes"]!.AsArray().Select(m => (string)m!).ToList();
        bool dev = install.Contains("dev", StringComparison.Ordinal);
        // Dev clusters are one node, where ReadWriteOnce is shared by every pod on it; everything else spans nodes.
        Assert.Equal(dev ? "ReadWriteOnce" : "ReadWriteMany", Assert.Single(modes));
    }

    private static void Probe(JsonObject container, string kind, string path, int port)
    {
        var get = container[kind]?["httpGet"] ?? throw new Xunit.Sdk.XunitException($"the silo has no {kind} httpGet");
        Assert.Equal(path, (string?)get["path"]);
        Assert.Equal(port, Installs.ResolvePort(container, get["port"]!));
        Assert.Null(get["scheme"]);
    }

    private static void ServicePort(JsonObject container, JsonObject service, string name, int expected)
    {
        var port = service["spec"]!["ports"]!.AsArray().SingleOrDefault(p => (string?)p!["name"] == name)
            ?? throw new Xunit.Sdk.XunitException($"{Manifest.Describe(service)} has no port {name}");
        Assert.Equal(expected, (int)port["port"]!);
        Assert.Equal(expected, Installs.ResolvePort(container, port["targetPort"]!));
    }

    /// <summary>The value of a silo option the container passes once, or <paramref name="fallback"/> when it passes none.</summary>
    private static string SingleValue(JsonObject container, string option, string? fallback = null)
    {
        var values = SiloContract.Parse(Installs.Args(container), SiloContract.Options).Where(o => o.Option == option).ToList();
        if (values.Count == 0)
            return fallback ?? throw new Xunit.Sdk.XunitException($"the silo is not given {option}");
        return Assert.Single(values).Value!;
    }

    internal static void RestrictedPod(string owner, JsonObject spec)
    {
        var pod = spec["securityContext"];
        Assert.True((bool?)pod?["runAsNonRoot"] == true, $"{owner}: runAsNonRoot");
        Assert.True((int?)pod?["runAsUser"] > 0, $"{owner}: runAsUser");
        Assert.Equal("RuntimeDefault", (string?)pod?["seccompProfile"]?["type"]);
        Assert.False((bool?)spec["hostNetwork"] == true || (bool?)spec["hostPID"] == true, $"{owner}: host namespaces");
        Assert.False((bool?)spec["automountServiceAccountToken"] != false, $"{owner}: mounts a service account token it does not use");
        foreach (var c in spec["containers"]!.AsArray().Concat(spec["initContainers"]?.AsArray() ?? []))
        {
            string where = $"{owner} container {c!["name"]}";
            var sc = c["securityContext"];
            Assert.True((bool?)sc?["readOnlyRootFilesystem"] == true, $"{where}: readOnlyRootFilesystem");
            Assert.True((bool?)sc?["allowPrivilegeEscalation"] == false, $"{where}: allowPrivilegeEscalation");
            Assert.Equal(["ALL"], sc?["capabilities"]?["drop"]?.AsArray().Select(x => (string)x!).ToArray() ?? []);
            Assert.Null(sc?["capabilities"]?["add"]);
            Assert.Null(sc?["privileged"]);
            Assert.NotNull(c["resources"]?["requests"]?["memory"]);
            Assert.NotNull(c["resources"]?["limits"]?["memory"]);
        }
        foreach (var v in spec["volumes"]?.AsArray() ?? []) Assert.Null(v!["hostPath"]);
    }
}
