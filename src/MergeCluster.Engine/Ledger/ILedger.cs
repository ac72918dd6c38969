namespace MergeCluster.Engine.Ledger;

/// <summary>
/// The durable record of a cluster: membership, jobs, tasks and their leases. PostgreSQL in a cluster; memory in the
/// embedded default, where a job lives and dies with its process. The coordinator and the silos speak only to this
/// seam, so one engine runs in both.
/// </summary>
public interface ILedger : IAsyncDisposable
{
    // ---- membership ----
    Task RegisterSiloAsync(SiloRecord silo, CancellationToken ct);
    Task HeartbeatAsync(string silo, CancellationToken ct);
    Task DeregisterSiloAsync(string silo, CancellationToken ct);
    /// <summary>Silos whose heartbeat is newer than <paramref name="within"/>.</summary>
    Task<IReadOnlyList<SiloRecord>> LiveSilosAsync(TimeSpan within, CancellationToken ct);

    // ---- jobs ----
    /// <summary>Queues a job; returns its id. The coordinator plans its tasks later.</summary>
    Task<long> SubmitJobAsync(JobSubmission job, CancellationToken ct);
    Task<JobRecord?> GetJobAsync(long jobId, CancellationToken ct);
    Task<IReadOnlyList<JobRecord>> ListJobsAsync(int limit, CancellationToken ct);
    /// <summary>Marks a job cancelled; its pending tasks are never claimed again.</summary>
    Task<bool> CancelJobAsync(long jobId, CancellationToken ct);

    /// <summary>
    /// Takes the coordinator lease of some unfinished job (not yet finished by <see cref="FinishJobAsync"/>, so a job
    /// failed by a task or cancelled still gets its cleanup) whose lease is free or expired, so exactly one
    /// coordinator acts for a job at a time. Returns null when there is none.
    /// </summary>
    Task<JobRecord?> TryAcquireCoordinatorAsync(string silo, TimeSpan lease, CancellationToken ct);
    /// <summary>
    /// Extends the coordinator lease; false when it was lost (expired and taken by another silo) or the job has ended.
    /// A zero duration hands the job over at once (a draining silo).
    /// </summary>
    Task<bool> RenewCoordinatorAsync(long jobId, string silo, TimeSpan lease, CancellationToken ct);
    /// <summary>
    /// Stores the plan's tasks and moves the job to Running, in one transaction; <paramref name="options"/>, when
    /// given, replaces the job's options in the same transaction (the state planning created, see JobPlan). Idempotent per job.
    /// </summary>
    Task AddTasksAsync(long jobId, string silo, IReadOnlyList<TaskSpec> tasks, CancellationToken ct, string? options = null);
    /// <summary>
    /// Ends a job: Succeeded, Failed (with its error) or Cancelled, and sets FinishedAt. A job already failed by a
    /// task or cancelled keeps that state and its first error.
    /// </summary>
    Task FinishJobAsync(long jobId, JobState state, string? error, CancellationToken ct);

    // ---- tasks ----
    /// <summary>
    /// Claims one ready task (all dependencies done, job running, attempts left) under a lease:
    /// in PostgreSQL with FOR UPDATE SKIP LOCKED. Expired leases count as free. Null when none is ready.
    /// </summary>
    Task<TaskLease?> ClaimTaskAsync(string silo, TimeSpan lease, CancellationToken ct);
    /// <summary>False when the lease was lost or the job stopped running; the worker must then abandon the attempt.</summary>
    Task<bool> RenewTaskAsync(TaskLease lease, TimeSpan duration, CancellationToken ct);
    /// <summary>Marks the task done and unblocks its dependents; false when this attempt no longer holds the lease.</summary>
    Task<bool> CompleteTaskAsync(TaskLease lease, CancellationToken ct);
    /// <summary>
    /// Records a failed attempt. A permanent failure, or the last allowed attempt, fails the task and its job.
    /// False when this attempt no longer holds the lease.
    /// </summary>
    Task<bool> FailTaskAsync(TaskLease lease, string error, bool permanent, CancellationToken ct);
    /// <summary>Gives a task back unfinished (a draining silo) without counting an attempt; false when the lease was lost.</summary>
    Task<bool> ReleaseTaskAsync(TaskLease lease, CancellationToken ct);
    Task<IReadOnlyList<TaskRecord>> ListTasksAsync(long jobId, CancellationToken ct);
    /// <summary>A job's tasks by state in one cheap query: what the coordinator and <c>submit --wait</c> poll.</summary>
    Task<TaskCounts> CountTasksAsync(long jobId, CancellationToken ct);

    /// <summary>Waits until work may be available (LISTEN/NOTIFY where the store has it) or the timeout passes.</summary>
    Task WaitForWorkAsync(TimeSpan timeout, CancellationToken ct);
    /// <summary>
    /// Waits until some job may need its coordinator or follower (submitted, cancelled, failed by a task, its last
    /// task done, or ended) or the timeout passes. Separate from <see cref="WaitForWorkAsync"/>, which wakes on every
    /// task completion: a coordinator polling on each would cost a round trip per task per silo.
    /// </summary>
    Task WaitForJobChangeAsync(TimeSpan timeout, CancellationToken ct);
}

/// <summary>A member of the cluster as the membership table records it.</summary>
public sealed record SiloRecord(string Name, string Host, int Pid, DateTimeOffset StartedAt, DateTimeOffset Heartbeat, string? Models = null);

/// <summary>What a client submits: the canonical recipe text and where its relative paths resolve.</summary>
public sealed record JobSubmission(string RecipeText, string RecipeDirectory, string Options, string? TraceParent);

public enum JobState { Queued, Running, Succeeded, Failed, Cancelled }

/// <summary>A job row: its recipe, state, coordinator lease and the trace it belongs to.</summary>
public sealed record JobRecord(
    long Id, JobState State, string RecipeText, string RecipeDirectory, string Options,
    string? Coordinator, DateTimeOffset? CoordinatorLeaseUntil, string? TraceParent,
    DateTimeOffset SubmittedAt, DateTimeOffset? FinishedAt, string? Error);

public enum TaskState { Pending, Leased, Done, Failed }

/// <summary>A task the coordinator plans: a unique name in its job, a kind, an engine payload and the names it waits for.</summary>
public sealed record TaskSpec(string Name, string Kind, string Payload, IReadOnlyList<string> DependsOn, long Bytes, string? PreferredSilo = null);

/// <summary>A claimed task: the attempt number scopes its scratch files, the trace parent links its span to the job's trace.</summary>
public sealed record TaskLease(long JobId, long TaskId, string Name, string Kind, string Payload, int Attempt, string Silo, DateTimeOffset LeaseUntil, string? TraceParent, long Bytes = 0);

/// <summary>A task row as <c>status</c> shows it; StartedAt/FinishedAt are those of its latest attempt.</summary>
public sealed record TaskRecord(
    long TaskId, string Name, string Kind, TaskState State, int Attempts, string? Silo, DateTimeOffset? LeaseUntil, string? Error, long Bytes,
    DateTimeOffset? StartedAt = null, DateTimeOffset? FinishedAt = null);

/// <summary>How many of a job's tasks are in each state.</summary>
public sealed record TaskCounts(int Pending, int Leased, int Done, int Failed)
{
    public int Total => Pending + Leased + Done + Failed;
}
