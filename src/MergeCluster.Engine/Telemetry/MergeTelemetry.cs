using System.Diagnostics;
using System.Diagnostics.Metrics;
using MergeCluster.Engine.Execution;

namespace MergeCluster.Engine.Telemetry;

/// <summary>
/// The ActivitySource and Meter named "MergeCluster" that the engine and the cluster report to; the hosts wire the
/// OpenTelemetry SDK to them. Span and attribute names are constants here so exporters and tests agree.
/// </summary>
public static class MergeTelemetry
{
    public const string Name = "MergeCluster";

    public static readonly ActivitySource Source = new(Name);
    public static readonly Meter Meter = new(Name);

    public const string JobSpan = "mergecluster.job";
    public const string PlanSpan = "mergecluster.plan";
    public const string ScheduleSpan = "mergecluster.schedule";
    public const string AssembleSpan = "mergecluster.assemble";
    public const string TaskSpan = "mergecluster.task";

    public const string JobTag = "mergecluster.job";
    public const string TaskTag = "mergecluster.task";
    public const string KindTag = "mergecluster.task.kind";
    public const string ShardTag = "mergecluster.shard";
    public const string ModelsTag = "mergecluster.models";
    public const string SiloTag = "mergecluster.silo";
    public const string BytesTag = "mergecluster.bytes";
    public const string BytesReadTag = "mergecluster.bytes.read";
    public const string BytesWrittenTag = "mergecluster.bytes.written";
    public const string AttemptTag = "mergecluster.attempt";
    public const string StateTag = "state";

    /// <summary>Bytes read from model and scratch files; the engine adds to it.</summary>
    public static readonly Counter<long> BytesRead = Meter.CreateCounter<long>("mergecluster.bytes.read", "By", "bytes read from models and scratch files");
    /// <summary>Bytes written to scratch and output files; the engine adds to it.</summary>
    public static readonly Counter<long> BytesWritten = Meter.CreateCounter<long>("mergecluster.bytes.written", "By", "bytes written to scratch and output files");
    /// <summary>Task attempts as they end, tagged with <see cref="StateTag"/>: done, failed, released, lost.</summary>
    public static readonly Counter<long> Tasks = Meter.CreateCounter<long>("mergecluster.tasks", "{task}", "task attempts by how they ended");
    /// <summary>Task attempts after the first (a failure, or a silo lost while running it).</summary>
    public static readonly Counter<long> Retries = Meter.CreateCounter<long>("mergecluster.task.retries", "{attempt}", "task attempts after the first");

    /// <summary>
    /// Starts a job's root span and returns its W3C traceparent. With no listener (no exporter configured) a
    /// traceparent is still made up, so the silos' task spans share one trace id whatever the client did.
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

    /// <summary>Starts the span of one task attempt; <see cref="JobRun.Run"/> adds its shard, models and bytes.</summary>
    public static Activity? StartTask(MergeTask task, int attempt, ActivityContext parent, ActivityKind kind = ActivityKind.Internal)
    {
        var activity = Source.StartActivity(TaskSpan, kind, parent);
        activity?.SetTag(TaskTag, task.Name)
            .SetTag(KindTag, task.Kind)
            .SetTag(BytesTag, task.Bytes)
            .SetTag(AttemptTag, attempt);
        return activity;
    }

    /// <summary>The parent context stored as a traceparent; default (a new trace) when there is none or it is malformed.</summary>
    public static ActivityContext ParentOf(string? traceParent) =>
        traceParent is not null && ActivityContext.TryParse(traceParent, null, isRemote: true, out var context) ? context : default;
}
