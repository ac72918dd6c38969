using System.Collections.Immutable;

namespace MergeCluster.Cluster.Contracts;

/// <summary>
/// What a client submits: the recipe as written, where its relative paths resolve, and the job's settings;
/// <see cref="Selection"/> makes it a distance map or a sweep instead of a merge (a distance job has no recipe: its
/// text is empty and its source names the job).
/// </summary>
[GenerateSerializer, Immutable, Alias("mergecluster.JobSubmission")]
public sealed record JobSubmission(
    [property: Id(0)] string RecipeText,
    [property: Id(1)] string RecipeDirectory,
    [property: Id(2)] string RecipeSource,
    [property: Id(3)] JobSettings Settings,
    [property: Id(4)] string? TraceParent,
    [property: Id(5)] SelectionSettings? Selection = null)
{
    /// <summary><see cref="JobKinds.Merge"/>, <see cref="JobKinds.Distance"/> or <see cref="JobKinds.Sweep"/>.</summary>
    public string Kind => Selection?.Kind ?? JobKinds.Merge;
}

/// <summary>What a job computes.</summary>
public static class JobKinds
{
    public const string Merge = "merge", Distance = "distance", Sweep = "sweep";
}

/// <summary>
/// A distance or sweep job's own options, those of the `distance` and `sweep` commands: paths absolute, as the
/// silos see them.
/// </summary>
/// <param name="Kind"><see cref="JobKinds.Distance"/> or <see cref="JobKinds.Sweep"/>.</param>
/// <param name="OutputDirectory">distances.json, CSVs and plots; or the candidates.</param>
/// <param name="Models">distance: the models compared, in argument order.</param>
/// <param name="Base">distance: the reference model, listed first.</param>
/// <param name="Components">distance: comma-separated components (null: all).</param>
/// <param name="Blocks">distance: per UNET block too.</param>
/// <param name="Mode">sweep: "leave-one-out" or "swap".</param>
/// <param name="Component">sweep: the component varied.</param>
[GenerateSerializer, Immutable, Alias("mergecluster.SelectionSettings")]
public sealed record SelectionSettings(
    [property: Id(0)] string Kind,
    [property: Id(1)] string OutputDirectory,
    [property: Id(2)] string[]? Models = null,
    [property: Id(3)] string? Base = null,
    [property: Id(4)] string? Components = null,
    [property: Id(5)] bool Blocks = false,
    [property: Id(6)] string? Mode = null,
    [property: Id(7)] string? Component = null);

/// <summary>A temporary output a job owns, as it travels and is persisted: its path and identity ("device:inode:birth").</summary>
[GenerateSerializer, Immutable, Alias("mergecluster.JobFile")]
public sealed record JobFile(
    [property: Id(0)] string Path,
    [property: Id(1)] string Identity);

/// <summary>A job's settings as they travel and are persisted; the engine's <c>MergeJobOptions</c> on the wire.</summary>
[GenerateSerializer, Immutable, Alias("mergecluster.JobSettings")]
public sealed record JobSettings(
    [property: Id(0)] string Shape,
    [property: Id(1)] long ShardBytes,
    [property: Id(2)] bool HashInputs,
    [property: Id(3)] string? Output = null,
    [property: Id(4)] string? DType = null,
    [property: Id(5)] string? NonFinite = null);

/// <summary>Where a job is in its life; Failed and Cancelled jobs clean their files up before they are final.</summary>
[GenerateSerializer, Alias("mergecluster.JobPhase")]
public enum JobPhase { Queued, Running, Succeeded, Failed, Cancelled }

/// <summary>A job's tasks by state: running counts attempts handed to shard grains that have not reported back.</summary>
[GenerateSerializer, Immutable, Alias("mergecluster.TaskCounts")]
public sealed record TaskCounts(
    [property: Id(0)] int Pending,
    [property: Id(1)] int Running,
    [property: Id(2)] int Done,
    [property: Id(3)] int Failed)
{
    public int Total => Pending + Running + Done + Failed;
}

/// <summary>A task worth showing: running, failed, or retried.</summary>
[GenerateSerializer, Immutable, Alias("mergecluster.TaskSummary")]
public sealed record TaskSummary(
    [property: Id(0)] string Name,
    [property: Id(1)] string Kind,
    [property: Id(2)] string State,
    [property: Id(3)] int Attempts,
    [property: Id(4)] string? Silo,
    [property: Id(5)] string? Error);

/// <summary>What <c>status JOB</c> shows.</summary>
[GenerateSerializer, Immutable, Alias("mergecluster.JobStatus")]
public sealed record JobStatus(
    [property: Id(0)] long Job,
    [property: Id(1)] JobPhase State,
    [property: Id(2)] TaskCounts Tasks,
    [property: Id(3)] string? Error,
    [property: Id(4)] DateTimeOffset? SubmittedAt,
    [property: Id(5)] DateTimeOffset? FinishedAt,
    [property: Id(6)] string? Output,
    [property: Id(7)] string? RecipeDirectory,
    [property: Id(8)] string? Shape,
    [property: Id(9)] string? Coordinator,
    [property: Id(10)] bool CleaningUp,
    [property: Id(11)] int Retries,
    [property: Id(12)] long BytesRead,
    [property: Id(13)] long BytesWritten,
    [property: Id(14)] ImmutableArray<TaskSummary> Notable,
    [property: Id(15)] int StorageWrites,
    [property: Id(16)] string Kind = JobKinds.Merge)
{
    public bool Exists => SubmittedAt is not null;
}

/// <summary>A live silo as the cluster sees it: name, address and what it announced in its metadata.</summary>
[GenerateSerializer, Immutable, Alias("mergecluster.SiloInfo")]
public sealed record SiloInfo(
    [property: Id(0)] string Name,
    [property: Id(1)] string Address,
    [property: Id(2)] string Status,
    [property: Id(3)] int Threads,
    [property: Id(4)] int Models);

/// <summary>
/// One job: the coordinator. It plans the job, hands its tasks to shard grains and follows their reports, assembles
/// the output, and persists enough to resume after its silo dies. No call waits for long work.
/// </summary>
[Alias("mergecluster.IJobGrain")]
public interface IJobGrain : IGrainWithIntegerKey
{
    /// <summary>Records the job (durably) and returns; planning runs in the background.</summary>
    [Alias("Submit")]
    Task Submit(JobSubmission submission);

    [Alias("GetStatus")]
    Task<JobStatus> GetStatus();

    /// <summary>Cancels a queued or running job; false when it had already ended.</summary>
    [Alias("Cancel")]
    Task<bool> Cancel();

    /// <summary>A shard grain's report on an attempt it ran.</summary>
    [Alias("TaskEnded")]
    Task TaskEnded(TaskReport report);

    /// <summary>Wakes the job (after its silo left, or from a reminder); a no-op for an active one.</summary>
    [Alias("Resume")]
    Task Resume();
}

/// <summary>Hands out job ids and remembers recent jobs for <c>status</c>.</summary>
[Alias("mergecluster.IJobRegistryGrain")]
public interface IJobRegistryGrain : IGrainWithIntegerKey
{
    /// <summary>Allocates the next job id, submits the job to its grain, and returns the id.</summary>
    [Alias("Submit")]
    Task<long> Submit(JobSubmission submission);

    /// <summary>The most recent job ids, newest first.</summary>
    [Alias("Recent")]
    Task<ImmutableArray<long>> Recent(int limit);
}

/// <summary>The live silos, with what each announced (any silo answers).</summary>
[Alias("mergecluster.IClusterGrain")]
public interface IClusterGrain : IGrainWithIntegerKey
{
    [Alias("Silos")]
    Task<ImmutableArray<SiloInfo>> Silos();
}
