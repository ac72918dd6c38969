using MergeCluster.Engine.Ledger;

namespace MergeCluster.Engine.Runtime;

/// <summary>
/// What a job means to the runtime: how to plan it into tasks, run one task, and assemble the result.
/// The coordinator and worker loops know only the ledger and this seam; the merge engine implements it.
/// </summary>
public interface IJobEngine
{
    /// <summary>
    /// Validates the job and turns it into tasks with dependencies; called by the coordinator before any task exists.
    /// Cancelled (<paramref name="ct"/>) when the job is cancelled meanwhile; whatever it created by then it removes.
    /// </summary>
    Task<JobPlan> PlanAsync(JobRecord job, IReadOnlyList<SiloRecord> silos, CancellationToken ct);

    /// <summary>Runs one claimed task. Throwing <see cref="PermanentTaskException"/> fails the job without retries.</summary>
    Task RunTaskAsync(JobRecord job, TaskLease lease, CancellationToken ct);

    /// <summary>
    /// After the ledger has recorded the task done, which is final: what only this task consumed (the partial sums of
    /// its children) can be removed, so scratch space stays bounded by the shards in flight. Best effort: whatever is
    /// left goes with the job's scratch at the end.
    /// </summary>
    Task TaskDoneAsync(JobRecord job, TaskLease lease, CancellationToken ct) => Task.CompletedTask;

    /// <summary>Once every task is done: verifies and commits the output (fsync, rename). Idempotent.</summary>
    Task AssembleAsync(JobRecord job, CancellationToken ct);

    /// <summary>Removes a failed or cancelled job's scratch and temporary files.</summary>
    Task CleanupAsync(JobRecord job, CancellationToken ct);
}

/// <summary>
/// What planning produced: the tasks, and the job's options as planning completed them. The plan may create files
/// every later step needs (the merge's temporary output, created under a random name so that no one can plant a link
/// there); their paths are job state, carried in <see cref="Options"/>. The runtime stores the options with the tasks,
/// in the same transaction, and every later call of the engine for this job (run, task done, assemble, cleanup), in
/// any process, receives them as <see cref="JobRecord.Options"/>.
/// </summary>
public sealed record JobPlan(IReadOnlyList<TaskSpec> Tasks, string Options);

/// <summary>A task failure that retrying cannot fix (a corrupt input, a recipe error).</summary>
public sealed class PermanentTaskException(string message, Exception? inner = null) : Exception(message, inner);
