using System.Text.Json;
using System.Text.Json.Nodes;
using k8s;

namespace MergeCluster.Deploy.Tests.Infrastructure;

/// <summary>
/// The objects one install renders (kustomize or helm), each already checked against its API's schema and, for
/// built-in kinds, loaded with unknown fields refused; rendering or validation errors throw with the tool's output.
/// </summary>
internal sealed class Manifest
{
    public string Source { get; }
    public IReadOnlyList<JsonObject> Objects { get; }

    private Manifest(string source, IReadOnlyList<JsonObject> objects)
    {
        Source = source;
        Objects = objects;
    }

    /// <summary>`kubectl kustomize DIR` (relative to the repository root, or absolute).</summary>
    public static Manifest Kustomize(string directory) =>
        Validate($"kubectl kustomize {directory}", Tool.Run(Tool.Kubectl, ["kustomize", Tool.RepoPath(directory)]).Success());

    /// <summary>The base with the given components (deploy/components/NAME), as an overlay that adds only them.</summary>
    public static Manifest KustomizeWithComponents(params string[] components)
    {
        string dir = Directory.CreateTempSubdirectory("mergecluster-kustomize-").FullName;
        try
        {
            File.WriteAllLines(Path.Combine(dir, "kustomization.yaml"),
                new[] { "apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization", "namespace: mergecluster", "resources:", $"  - {Relative("deploy/base")}", "components:" }
                    .Concat(components.Select(c => $"  - {Relative($"deploy/components/{c}")}")));
            string yaml = Tool.Run(Tool.Kubectl, ["kustomize", dir]).Success();
            // kustomize takes no absolute paths to bases and components.
            string Relative(string path) => Path.GetRelativePath(dir, Tool.RepoPath(path));
            return Validate($"deploy/base + components {string.Join(", ", components)}", yaml);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    /// <summary>`helm template mergecluster helm/mergecluster -n mergecluster` with the given values files (relative to the chart).</summary>
    public static Manifest Helm(int major, params string[] valuesFiles)
    {
        var args = new List<string> { "template", "mergecluster", Tool.RepoPath("helm/mergecluster"), "--namespace", "mergecluster" };
        foreach (var file in valuesFiles) args.AddRange(["--values", Tool.RepoPath(Path.Combine("helm/mergecluster", file))]);
        string yaml = Tool.Run(Tool.Helm(major), args, environment: HelmEnvironment()).Success();
        return Validate($"helm {major} template{string.Concat(valuesFiles.Select(f => " -f " + f))}", yaml);
    }

    /// <summary>Helm keeps its cache and config under HOME unless told; keep them out of the user's.</summary>
    public static IReadOnlyDictionary<string, string> HelmEnvironment()
    {
        string home = Path.Combine(Path.GetTempPath(), "mergecluster-deploy-tests-helm");
        return new Dictionary<string, string>
        {
            ["HELM_CACHE_HOME"] = Path.Combine(home, "cache"),
            ["HELM_CONFIG_HOME"] = Path.Combine(home, "config"),
            ["HELM_DATA_HOME"] = Path.Combine(home, "data"),
        };
    }

    /// <summary>Validates a rendered YAML stream: the schemas (tools/validate.mjs), then strict loading of built-in kinds.</summary>
    public static Manifest Validate(string source, string yaml)
    {
        var result = Tool.Run("node", [Path.Combine(Tool.ToolsDirectory, "validate.mjs")], stdin: yaml);
        if (result.ExitCode != 0)
            throw new InvalidOperationException($"{source}: objects fail their schemas:\n{result.Stderr}");
        var objects = JsonNode.Parse(result.Stdout)!.AsArray().Select(o => o!.AsObject()).ToList();
        foreach (var o in objects.Where(IsBuiltIn))
        {
            try { KubernetesYaml.LoadAllFromString(o.ToJsonString(), strict: true); }
            catch (Exception e) { throw new InvalidOperationException($"{source}: {Describe(o)}: {e.Message}", e); }
        }
        return new Manifest(source, objects);
    }

    private static bool IsBuiltIn(JsonObject o)
    {
        string apiVersion = (string)o["apiVersion"]!;
        int slash = apiVersion.IndexOf('/');
        if (slash < 0) return true;
        string group = apiVersion[..slash];
        return !group.Contains('.') || group.EndsWith(".k8s.io", StringComparison.Ordinal);
    }

    public static string Describe(JsonObject o) => $"{o["kind"]}/{o["metadata"]?["name"]}";

    public IEnumerable<JsonObject> OfKind(string kind) => Objects.Where(o => (string?)o["kind"] == kind);

    public JsonObject? Find(string kind, string name) =>
        OfKind(kind).SingleOrDefault(o => (string?)o["metadata"]?["name"] == name);

    public JsonObject Get(string kind, string name) =>
        Find(kind, name) ?? throw new Xunit.Sdk.XunitException($"{Source}: no {kind}/{name} among {string.Join(", ", Objects.Select(Describe))}");

    /// <summary>Every pod the install makes: bare Pods and the templates of Deployments, StatefulSets, DaemonSets and Jobs.</summary>
    public IEnumerable<(JsonObject Owner, JsonObject PodSpec, JsonObject PodMetadata)> PodTemplates() =>
        Objects.Where(o => o["spec"]?["template"]?["spec"] is JsonObject)
            .Select(o => (o, o["spec"]!["template"]!["spec"]!.AsObject(), o["spec"]!["template"]!["metadata"]?.AsObject() ?? new JsonObject()))
            .Concat(OfKind("Pod").Select(p => (p, p["spec"]!.AsObject(), p["metadata"]!.AsObject())));

    /// <summary>Each object as canonical JSON (keys sorted), for comparing two renderings.</summary>
    public static string Canonical(JsonNode? node)
    {
        return Sort(node)?.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) ?? "null";

        static JsonNode? Sort(JsonNode? n) => n switch
        {
            JsonObject obj => new JsonObject(obj.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => KeyValuePair.Create(p.Key, Sort(p.Value)))),
            JsonArray arr => new JsonArray(arr.Select(Sort).ToArray()),
            null => null,
            _ => JsonNode.Parse(n.ToJsonString()),
        };
    }
}
