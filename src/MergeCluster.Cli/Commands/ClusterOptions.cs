using System.CommandLine;
using MergeCluster.Cluster;
using MergeCluster.Cluster.Client;
using MergeCluster.Cluster.Silo;

namespace MergeCluster.Cli.Commands;

/// <summary>The options every cluster command shares (the silo contract): storage, cluster id, service id, each with its environment fallback.</summary>
public sealed class ClusterOptions
{
    public const string ClusterIdVariable = "MERGECLUSTER_CLUSTER_ID", ServiceIdVariable = "MERGECLUSTER_SERVICE_ID";

    public Option<string?> Storage { get; } = new("--storage")
    {
        Description = $"Azure Storage connection string shared by the cluster (default: ${StorageConnection.EnvironmentVariable}); its key is never printed",
        HelpName = "CONN",
    };
    public Option<string?> ClusterId { get; } = new("--cluster-id") { Description = $"Orleans ClusterId (default: ${ClusterIdVariable}, else {ClusterNames.DefaultClusterId})", HelpName = "ID" };
    public Option<string?> ServiceId { get; } = new("--service-id") { Description = $"Orleans ServiceId (default: ${ServiceIdVariable}, else {ClusterNames.DefaultServiceId})", HelpName = "ID" };

    public void AddTo(Command command)
    {
        command.Options.Add(Storage);
        command.Options.Add(ClusterId);
        command.Options.Add(ServiceId);
    }

    public ClientSettings Resolve(ParseResult parse) =>
        new(StorageConnection.Parse(parse.GetValue(Storage)), IdOf(parse, ClusterId, ClusterIdVariable, ClusterNames.DefaultClusterId),
            IdOf(parse, ServiceId, ServiceIdVariable, ClusterNames.DefaultServiceId));

    public Task<ClusterConnection> ConnectAsync(ParseResult parse, string instance, CancellationToken ct) => ClusterConnection.ConnectAsync(Resolve(parse), instance, ct);

    private static string IdOf(ParseResult parse, Option<string?> option, string variable, string fallback) =>
        parse.GetValue(option) is { Length: > 0 } value ? value : Environment.GetEnvironmentVariable(variable) is { Length: > 0 } env ? env : fallback;
}
