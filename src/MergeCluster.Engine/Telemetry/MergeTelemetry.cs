using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace MergeCluster.Engine.Telemetry;

/// <summary>
/// The ActivitySource and Meter named "MergeCluster" that the runtime and the engine report to; the CLI wires the
/// OpenTelemetry SDK to them. Span and attribute names are constants here so exporters and tests agree.
/// </summary>
public static class MergeTelemetry
{
    public const string Name = "MergeCluster";

    public static readonly ActivitySource Source = new(Name);
    public static readonly Meter Meter = new(Name);

    public const string JobSpan = "mergecluster.job";
    public const string CoordinateSpan = "mergecluster.coordinate";
    public const string PlanSpan = "mergecluster.plan";
    public const string AssembleSpan = "mergecluster.assemble";
    public const string TaskSpan = "mergecluster.task";

    public const string JobTag = "mergecluster.job";
    public const string TaskTag = "mergecluster.task";
    public const string KindTag = "mergecluster.task.kind";
    public const string ShardTag = "mergecluster.shard";
    public const string ModelsTag = "mergecluster.models";
    public const string SiloTag = "mergecluster.silo";
    public const string BytesTag = "mergecluster.bytes";
    public const string AttemptTag = "mergecluster.attempt";
    public const string StateTag = "state";

    /// <summary>Bytes read from model and scratch files; the engine adds to it.</summary>
    public static readonly Counter<long> BytesRead = Meter.CreateCounter<long>("mergecluster.bytes.read", "By", "bytes read from models and scratch files");
    /// <summary>Bytes written to scratch and output files; the engine adds to it.</summary>
    public static readonly Counter<long> BytesWritten = Meter.CreateCounter<long>("mergecluster.bytes.written", "By", "bytes written to scratch and output files");
    /// <summary>Task attempts as they end, tagged with <see cref="StateTag"/>: done, failed, released, lost.</summary>
    public static readonly Counter<long> Tasks = Meter.CreateCounter<long>("mergecluster.tasks", "{task}", "task attempts by how they ended");
    /// <summary>Claims that took a task over from an expired lease.</summary>
    public static readonly Counter<long> LeaseExpiries = Meter.CreateCounter<long>("mergecluster.lease.expiries", "{lease}", "task leases that expired and were taken over");
    /// <summary>Claims of a task's second or later attempt.</summary>
    public static readonly Counter<long> Retries = Meter.CreateCounter<long>("mergecluster.task.retries", "{attempt}", "task attempts after the first");
    /// <summary>Ledger calls retried after a transient error (a lost connection, a restarting server).</summary>
    public static readonly Counter<long> LedgerRetries = Meter.CreateCounter<long>("mergecluster.ledger.retries", "{call}", "ledger calls retried after a transient error");

    /// <summary>
    /// Starts a job's root span and returns its W3C traceparent for the ledger. With no listener (no exporter
    /// configured) a traceparent is still made up, so the silos' task spans share one trace id whatever the client did.
    /// </summary>
    public static Activity? StartJob(string recipe, out string traceParent)
    {
        var activity = Source.StartActivity(JobSpan, ActivityKind.Producer, parentContext: default);
        activity?.SetTag("mergecluster.recipe", recipe);
        traceParent = activity?.Id is { } id && activity.IdFormat == ActivityIdFormat.W3C
            ? id
            : $"00-{ActivityTraceId.CreateRandom().ToHexString()}-{ActivitySpanId.CreateRandom().ToHexString()}-01";
        return activity;
    }

    /// <summary>The parent context stored as a traceparent; default (a new trace) when there is none or it is malformed.</summary>
    public static ActivityContext ParentOf(string? traceParent) =>
        traceParent is not null && ActivityContext.TryParse(traceParent, null, isRemote: true, out var context) ? context : default;
}
