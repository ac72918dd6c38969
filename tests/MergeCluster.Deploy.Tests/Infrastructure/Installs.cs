using System.Collections.Concurrent;
using System.Text.Json.Nodes;

namespace MergeCluster.Deploy.Tests.Infrastructure;

/// <summary>Every install the repository offers, rendered once per test run and shared by the tests.</summary>
internal static class Installs
{
    private static readonly Dictionary<string, Func<Manifest>> All = new()
    {
        ["deploy"] = () => Manifest.Kustomize("deploy"),
        ["deploy/overlays/dev"] = () => Manifest.Kustomize("deploy/overlays/dev"),
        ["deploy/overlays/production"] = () => Manifest.Kustomize("deploy/overlays/production"),
        ["deploy/base+keda"] = () => Manifest.KustomizeWithComponents("keda"),
        ["deploy/base+gpu"] = () => Manifest.KustomizeWithComponents("gpu"),
        ["deploy/base+prometheus-operator"] = () => Manifest.KustomizeWithComponents("prometheus-operator"),
        ["helm"] = () => Manifest.Helm(4),
        ["helm ci/dev-values.yaml"] = () => Manifest.Helm(4, "ci/dev-values.yaml"),
        ["helm ci/production-values.yaml"] = () => Manifest.Helm(4, "ci/production-values.yaml"),
        ["helm ci/keda-values.yaml"] = () => Manifest.Helm(4, "ci/keda-values.yaml"),
        ["helm ci/gpu-values.yaml"] = () => Manifest.Helm(4, "ci/gpu-values.yaml"),
        ["helm ci/podmonitor-values.yaml"] = () => Manifest.Helm(4, "ci/podmonitor-values.yaml"),
    };

    private static readonly ConcurrentDictionary<string, Lazy<Manifest>> Rendered = new();

    public static Manifest Get(string name) =>
        Rendered.GetOrAdd(name, n => new Lazy<Manifest>(All[n], LazyThreadSafetyMode.ExecutionAndPublication)).Value;

    /// <summary>Names of every install that runs silos (all of them), as xunit theory data.</summary>
    public static TheoryData<string> Names()
    {
        var data = new TheoryData<string>();
        foreach (var name in All.Keys) data.Add(name);
        return data;
    }

    /// <summary>The silo Deployment of an install.</summary>
    public static JsonObject SiloDeployment(Manifest manifest) => manifest.Get("Deployment", "mergecluster-silo");

    public static JsonObject SiloContainer(Manifest manifest) => Container(SiloDeployment(manifest), "silo");

    public static JsonObject Container(JsonObject owner, string name) =>
        owner["spec"]!["template"]!["spec"]!["containers"]!.AsArray().Select(c => c!.AsObject())
            .SingleOrDefault(c => (string?)c["name"] == name)
        ?? throw new Xunit.Sdk.XunitException($"{Manifest.Describe(owner)}: no container {name}");

    public static List<string> Args(JsonObject container) =>
        container["args"]?.AsArray().Select(a => (string)a!).ToList() ?? [];

    /// <summary>The container port a probe or Service names, by name or number.</summary>
    public static int ResolvePort(JsonObject container, JsonNode port)
    {
        if (port.GetValueKind() == System.Text.Json.JsonValueKind.Number) return (int)port;
        string name = (string)port!;
        var match = container["ports"]?.AsArray().Select(p => p!.AsObject()).SingleOrDefault(p => (string?)p["name"] == name)
            ?? throw new Xunit.Sdk.XunitException($"container {container["name"]} has no port named {name}");
        return (int)match["containerPort"]!;
    }

    /// <summary>The container's environment variable <paramref name="name"/>.</summary>
    public static JsonObject? Env(JsonObject container, string name) =>
        container["env"]?.AsArray().Select(e => e!.AsObject()).SingleOrDefault(e => (string?)e["name"] == name);

    /// <summary>True when every label of <paramref name="selector"/> is on <paramref name="labels"/> with the same value.</summary>
    public static bool Selects(JsonNode? selector, JsonNode? labels) =>
        selector is JsonObject sel && sel.Count > 0 && labels is JsonObject lab
        && sel.All(p => lab.TryGetPropertyValue(p.Key, out var v) && (string?)v == (string?)p.Value);
}
