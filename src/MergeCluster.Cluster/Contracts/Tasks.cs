namespace MergeCluster.Cluster.Contracts;

/// <summary>
/// What a shard grain needs to run one task attempt: the job (recipe, settings, the files it owns, the plan digest
/// every silo must derive again) and which task. Never tensor bytes: those go through the shared volume. A merge's
/// temporary output is <see cref="TempOutput"/>, a sweep's are <see cref="Candidates"/> (TempOutput empty).
/// </summary>
[GenerateSerializer, Immutable, Alias("mergecluster.TaskOrder")]
public sealed record TaskOrder(
    [property: Id(0)] long Job,
    [property: Id(1)] JobSubmission Submission,
    [property: Id(2)] string Shape,
    [property: Id(3)] string TempOutput,
    [property: Id(4)] string? Scratch,
    [property: Id(5)] string PlanDigest,
    [property: Id(6)] int Task,
    [property: Id(7)] string TaskName,
    [property: Id(8)] int Attempt,
    [property: Id(9)] string? TempIdentity = null,
    [property: Id(10)] JobFile[]? Candidates = null);

/// <summary>Where an attempt runs: the attempt the grain is running (an earlier one if it was still busy) and its silo.</summary>
[GenerateSerializer, Immutable, Alias("mergecluster.TaskStarted")]
public sealed record TaskStarted(
    [property: Id(0)] int Attempt,
    [property: Id(1)] SiloAddress Silo,
    [property: Id(2)] string SiloName);

[GenerateSerializer, Alias("mergecluster.TaskOutcome")]
public enum TaskOutcome { Done, Failed, Released }

/// <summary>
/// How an attempt ended; Released (a draining silo, a cancel) costs no attempt. <see cref="Redo"/>: the task whose
/// partial sum this one found missing, to run again first (-1 for none).
/// </summary>
[GenerateSerializer, Immutable, Alias("mergecluster.TaskReport")]
public sealed record TaskReport(
    [property: Id(0)] int Task,
    [property: Id(1)] int Attempt,
    [property: Id(2)] TaskOutcome Outcome,
    [property: Id(3)] string? Error,
    [property: Id(4)] bool Permanent,
    [property: Id(5)] string Silo,
    [property: Id(6)] long BytesRead,
    [property: Id(7)] long BytesWritten,
    [property: Id(8)] int Redo = -1);

/// <summary>
/// A shard grain owns one task of a job's key shard (keyed "job/task"): a fused shard, a leaf partial sum over one
/// reduction group (placed on a silo holding its models), a pairwise reduce, or the final rounding into the output.
/// It runs the task in the background and reports to the job grain.
/// </summary>
[Alias("mergecluster.IShardGrain")]
public interface IShardGrain : IGrainWithStringKey
{
    /// <summary>Starts the attempt in the background and returns at once; a grain already running one keeps it.</summary>
    [Alias("Run")]
    Task<TaskStarted> Run(TaskOrder order);

    /// <summary>Cancels the attempt if it runs; it then reports Released.</summary>
    [Alias("Cancel")]
    Task Cancel(int attempt);

    /// <summary>The attempt this activation runs, if any: none from a new activation, whose predecessor died with its silo.</summary>
    [Alias("Current")]
    Task<TaskStarted?> Current();
}
