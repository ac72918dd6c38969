using MergeCluster.Cluster.Ledger;
using MergeCluster.Cluster.Telemetry;
using MergeCluster.Engine.Ledger;
using MergeCluster.Engine.Runtime;

namespace MergeCluster.Cluster;

/// <summary>What <c>mergecluster silo</c> was asked to run as.</summary>
public sealed record SiloSettings(string? Ledger, string? Name, int Threads, IReadOnlyList<string> DataRoots, TimeSpan Lease, TimeSpan DrainGrace);

/// <summary>
/// The silo process around the runtime's <see cref="Silo"/>: opens the PostgreSQL ledger, confines files to the data
/// roots, builds the engine through the factory it is given, exports telemetry, and logs one line per event.
/// </summary>
public static class SiloHost
{
    /// <summary>Runs until <paramref name="drain"/> (SIGTERM) has drained the silo, or <paramref name="abort"/>.</summary>
    public static async Task RunAsync(SiloSettings settings, Func<DataRoots, IJobEngine> engineFactory, TextWriter output,
        CancellationToken drain, CancellationToken abort)
    {
        var connection = LedgerConnection.Parse(settings.Ledger);
        var roots = new DataRoots(settings.DataRoots);
        var engine = engineFactory(roots);
        var name = string.IsNullOrWhiteSpace(settings.Name) ? $"{Environment.MachineName}-{Environment.ProcessId}" : settings.Name;
        void Log(string message) => output.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} [{name}] {message}");

        using var telemetry = TelemetryExport.Start(name);
        await using var ledger = await PostgresLedger.OpenAsync(connection, new PostgresLedgerOptions { Log = Log }, abort);
        Log($"ledger {ledger.Display}; data roots {string.Join(", ", roots.Roots)}");
        var now = DateTimeOffset.UtcNow;
        var identity = new SiloRecord(name, Environment.MachineName, Environment.ProcessId, now, now, HeldModels(roots));
        var options = RuntimeOptions.ForLease(settings.Lease, settings.DrainGrace);
        await new Silo(ledger, engine, identity, settings.Threads, options, Log).RunAsync(drain, abort);
    }

    /// <summary>The checkpoints under the data roots, one full path a line: what the planner may place tasks near.</summary>
    private static string? HeldModels(DataRoots roots)
    {
        var scan = new EnumerationOptions { RecurseSubdirectories = true, IgnoreInaccessible = true, MaxRecursionDepth = 8 };
        var models = roots.Roots.SelectMany(r => Directory.EnumerateFiles(r, "*.safetensors", scan)).Order(StringComparer.Ordinal).ToList();
        return models.Count == 0 ? null : string.Join('\n', models);
    }
}
