namespace MergeCluster.Deploy.Tests.Infrastructure;

/// <summary>
/// The silo's command line as the contract agreed for the Orleans cluster (#11) and Kubernetes (#12) issues states
/// it (SILO-CONTRACT.md). The manifests are checked against this until the silo itself serves the HTTP endpoint;
/// from then on <see cref="SiloHelpTests"/> checks them against `mergecluster silo --help` as well.
/// </summary>
internal static class SiloContract
{
    /// <summary>Every option `mergecluster silo` takes, and whether it takes a value.</summary>
    public static readonly IReadOnlyDictionary<string, bool> Options = new Dictionary<string, bool>
    {
        ["--storage"] = true,
        ["--name"] = true,
        ["--threads"] = true,
        ["--data-root"] = true,
        ["--silo-port"] = true,
        ["--gateway-port"] = true,
        ["--cluster-id"] = true,
        ["--service-id"] = true,
        ["--advertised-ip"] = true,
        ["--http-port"] = true,
        ["--dashboard"] = false,
    };

    /// <summary>Options of the clients (submit, status, cancel) that the manifests may pass.</summary>
    public static readonly IReadOnlySet<string> SubmitOptions = new HashSet<string>
    {
        "--storage", "--cluster-id", "--service-id", "--wait", "--shape", "--shard-mb", "--no-hash",
    };

    public const int DefaultSiloPort = 11111;
    public const int DefaultGatewayPort = 30000;
    public const string DefaultClusterId = "mergecluster";
    public const string DefaultServiceId = "mergecluster";

    /// <summary>The process is alive.</summary>
    public const string Liveness = "/healthz";

    /// <summary>The silo has joined the cluster and can take work.</summary>
    public const string Readiness = "/readyz";

    public const string Metrics = "/metrics";

    public const string StorageVariable = "MERGECLUSTER_STORAGE";
    public const string NameVariable = "MERGECLUSTER_SILO_NAME";
    public const string AdvertisedIpVariable = "POD_IP";

    /// <summary>The gauges the autoscaler reads, as the Prometheus exporter names the "MergeCluster" meter's instruments.</summary>
    public const string PendingTasksMetric = "mergecluster_tasks_pending";
    public const string RunningTasksMetric = "mergecluster_tasks_running";

    /// <summary>"--x=v" and "--x v" alike: each option with its value (null for a flag).</summary>
    public static List<(string Option, string? Value)> Parse(IReadOnlyList<string> args, IReadOnlyDictionary<string, bool> takesValue)
    {
        var parsed = new List<(string, string?)>();
        for (int i = 0; i < args.Count; i++)
        {
            string arg = args[i];
            if (!arg.StartsWith("--", StringComparison.Ordinal)) continue;
            int eq = arg.IndexOf('=');
            if (eq > 0) parsed.Add((arg[..eq], arg[(eq + 1)..]));
            else if (takesValue.TryGetValue(arg, out bool value) && value && i + 1 < args.Count) parsed.Add((arg, args[++i]));
            else parsed.Add((arg, null));
        }
        return parsed;
    }
}
