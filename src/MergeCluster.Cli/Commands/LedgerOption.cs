using System.CommandLine;
using MergeCluster.Cluster.Ledger;

namespace MergeCluster.Cli.Commands;

/// <summary>The <c>--ledger</c> option the cluster commands share, and how a one-shot client opens the ledger.</summary>
public static class LedgerOption
{
    public static Option<string?> Create() => new("--ledger")
    {
        Description = $"PostgreSQL ledger: 'Host=...;Username=...;Password=...;Database=...' or postgres://user:password@host/db (default: ${LedgerConnection.EnvironmentVariable})",
        HelpName = "CONN",
    };

    /// <summary>
    /// Opens the ledger with few retries, so a client reports an unreachable server in seconds. Only a client that
    /// waits for notifications should <paramref name="listen"/>: listening costs a second connection.
    /// </summary>
    public static Task<PostgresLedger> OpenClientAsync(string? value, bool listen, CancellationToken ct) =>
        PostgresLedger.OpenAsync(LedgerConnection.Parse(value), PostgresLedgerOptions.Client(listen), ct);
}
