using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace MergeCluster.Deploy.Tests.Infrastructure;

/// <summary>A container's env as the kubelet resolves it: values with $(VAR) expanded, the Downward API, Secrets.</summary>
internal static partial class PodEnvironment
{
    /// <summary>
    /// Every variable of <paramref name="container"/>, in order: a value expands $(NAME) of the variables before it
    /// ($$ stays $), a fieldRef reads <paramref name="fields"/> (metadata.name, status.podIP, ...), a secretKeyRef
    /// reads <paramref name="secrets"/> by (secret, key). Anything else fails, so a new kind of env is noticed.
    /// </summary>
    public static Dictionary<string, string> Resolve(JsonObject container, IReadOnlyDictionary<string, string> fields, IReadOnlyDictionary<(string Secret, string Key), string> secrets)
    {
        var env = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var item in container["env"]?.AsArray() ?? [])
        {
            string name = (string)item!["name"]!;
            if (item["value"] is { } value)
            {
                env[name] = Reference().Replace((string)value!, m => m.Value == "$$" ? "$" : env.TryGetValue(m.Groups[1].Value, out var v) ? v : m.Value);
            }
            else if (item["valueFrom"]?["fieldRef"]?["fieldPath"] is { } field)
            {
                env[name] = fields.TryGetValue((string)field!, out var v) ? v : throw new Xunit.Sdk.XunitException($"{name}: no value stands in for field {field}");
            }
            else if (item["valueFrom"]?["secretKeyRef"] is JsonObject secret)
            {
                var key = ((string)secret["name"]!, (string)secret["key"]!);
                env[name] = secrets.TryGetValue(key, out var v) ? v : throw new Xunit.Sdk.XunitException($"{name}: no value stands in for secret {key}");
            }
            else
            {
                throw new Xunit.Sdk.XunitException($"{name}: an env source the test does not resolve: {item.ToJsonString()}");
            }
        }
        return env;
    }

    [GeneratedRegex(@"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")]
    private static partial Regex Reference();
}
