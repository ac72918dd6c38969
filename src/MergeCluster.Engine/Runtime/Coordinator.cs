using System.Diagnostics;
using MergeCluster.Engine.Ledger;
using MergeCluster.Engine.Telemetry;

namespace MergeCluster.Engine.Runtime;

/// <summary>
/// The coordinator role of a silo: takes the coordinator lease of unfinished jobs, plans a job that has no tasks yet
/// (one taken over from a dead coordinator resumes from the ledger's tasks instead), watches its progress, and ends
/// it: assembly on success, cleanup on a failed task or a cancel.
/// </summary>
public sealed class Coordinator(ILedger ledger, IJobEngine engine, string silo, RuntimeOptions options, Action<string> log)
{
    /// <summary>Coordinates jobs until <paramref name="drain"/>, then hands its jobs over at once (zero lease).</summary>
    public async Task RunAsync(CancellationToken drain, CancellationToken abort)
    {
        using var stopping = CancellationTokenSource.CreateLinkedTokenSource(drain, abort);
        var running = new List<Task>();
        while (!stopping.IsCancellationRequested)
        {
            running.RemoveAll(t => t.IsCompleted);
            try
            {
                var job = running.Count < options.MaxCoordinatedJobs
                    ? await ledger.TryAcquireCoordinatorAsync(silo, options.CoordinatorLease, stopping.Token)
                    : null;
                if (job is not null)
                {
                    running.Add(CoordinateAsync(job, drain, abort));
                    continue;
                }
                // A submit wakes this at once; the poll finds what no notification announces: a dead coordinator's
                // lease running out.
                await ledger.WaitForJobChangeAsync(options.PollInterval, stopping.Token);
            }
            catch (Exception e)
            {
                if (stopping.IsCancellationRequested) break;
                // The ledger's retries are spent (a long outage): the silo stays up and tries again.
                log($"coordinator: {e.Message}");
                await Task.WhenAny(Task.Delay(options.PollInterval * 5, stopping.Token));
            }
        }
        await Task.WhenAll(running);
    }

    /// <summary>
    /// Coordinates one job whose lease this silo holds, until it ends or the lease is lost. On drain, waiting stops at
    /// once; a plan or assembly in progress gets the grace period. Never throws.
    /// </summary>
    public async Task CoordinateAsync(JobRecord job, CancellationToken drain, CancellationToken abort)
    {
        using var activity = MergeTelemetry.Source.StartActivity(MergeTelemetry.CoordinateSpan, ActivityKind.Internal, MergeTelemetry.ParentOf(job.TraceParent));
        activity?.SetTag(MergeTelemetry.JobTag, job.Id).SetTag(MergeTelemetry.SiloTag, silo);
        log($"coordinating job {job.Id} ({job.State})");
        await using var keeper = new LeaseKeeper(ct => ledger.RenewCoordinatorAsync(job.Id, silo, options.CoordinatorLease, ct),
            options.CoordinatorRenewEvery, options.CoordinatorLease, log);
        using var work = CancellationTokenSource.CreateLinkedTokenSource(keeper.Lost, abort);
        using var graceful = drain.Register(() => work.CancelAfter(options.DrainGrace));
        using var waiting = CancellationTokenSource.CreateLinkedTokenSource(work.Token, drain);
        try
        {
            await DriveAsync(job, work.Token, waiting.Token);
        }
        catch (Exception) when (keeper.IsLost)
        {
            log($"coordinator: lost job {job.Id}: {keeper.Reason}");
            return;
        }
        catch (Exception) when (waiting.IsCancellationRequested)
        {
            // Draining or stopping: another silo takes over from the ledger's state.
        }
        catch (Exception e)
        {
            // The ledger kept failing past its retries: the lease lapses and a coordinator takes over later.
            log($"coordinator: job {job.Id}: {e.Message}");
        }
        await HandOverAsync(job.Id);
    }

    private async Task DriveAsync(JobRecord job, CancellationToken work, CancellationToken waiting)
    {
        string? planned = null;
        if (job.State == JobState.Queued && (planned = await PlanAsync(job, work)) is null) return;
        while (true)
        {
            var current = await ledger.GetJobAsync(job.Id, waiting) ?? throw new InvalidOperationException($"job {job.Id} vanished from the ledger");
            // The options this coordinator's plan made reach its cleanup even when the ledger did not take the tasks
            // (the job was cancelled while it planned); a coordinator taking over reads them from the ledger.
            if (planned is not null) current = current with { Options = planned };
            if (current.State is JobState.Failed or JobState.Cancelled)
            {
                await EndAsync(current, current.State, current.Error, work);
                return;
            }
            var counts = await ledger.CountTasksAsync(job.Id, waiting);
            if (counts.Done == counts.Total && current.State == JobState.Running)
            {
                await AssembleAsync(current, work);
                return;
            }
            // The last task's completion, a failure or a cancel wakes this; the poll covers a missed notification.
            await ledger.WaitForJobChangeAsync(options.PollInterval, waiting);
        }
    }

    /// <summary>Plans the job and stores its tasks; returns the plan's job options, or null when planning failed or was cancelled and the job has been ended.</summary>
    private async Task<string?> PlanAsync(JobRecord job, CancellationToken ct)
    {
        JobPlan plan;
        using (var activity = MergeTelemetry.Source.StartActivity(MergeTelemetry.PlanSpan))
        {
            activity?.SetTag(MergeTelemetry.JobTag, job.Id).SetTag(MergeTelemetry.SiloTag, silo);
            var silos = await ledger.LiveSilosAsync(options.LiveWithin, ct);
            // Planning reads every header and hashes the inputs (minutes for 50 checkpoints): a cancel must stop it.
            using var planning = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var ended = WatchForEndAsync(job.Id, planning);
            // Only the engine's verdict fails the job; a ledger outage here propagates and the plan is retried.
            try
            {
                plan = await engine.PlanAsync(job, silos, planning.Token);
                TaskGraph.Validate(plan.Tasks);
                activity?.SetTag("mergecluster.tasks", plan.Tasks.Count).SetTag(MergeTelemetry.BytesTag, plan.Tasks.Sum(t => t.Bytes));
            }
            catch (Exception e) when (!ct.IsCancellationRequested)
            {
                bool cancelled = planning.IsCancellationRequested;
                activity?.SetStatus(ActivityStatusCode.Error, cancelled ? "cancelled" : e.Message);
                log($"coordinator: job {job.Id} {(cancelled ? "was cancelled while it was planned" : $"cannot be planned: {e.Message}")}");
                await EndAsync(job, cancelled ? JobState.Cancelled : JobState.Failed, cancelled ? null : $"plan: {e.Message.ReplaceLineEndings(" ")}", ct);
                return null;
            }
            finally
            {
                planning.Cancel();
                await ended;
            }
        }
        await ledger.AddTasksAsync(job.Id, silo, plan.Tasks, ct, plan.Options);
        log($"coordinator: planned job {job.Id}: {plan.Tasks.Count} tasks");
        return plan.Options;
    }

    /// <summary>Cancels <paramref name="planning"/> when the job is cancelled or failed in the ledger; returns when planning ends. Never throws.</summary>
    private async Task WatchForEndAsync(long jobId, CancellationTokenSource planning)
    {
        try
        {
            while (!planning.IsCancellationRequested)
            {
                await ledger.WaitForJobChangeAsync(options.PollInterval, planning.Token);
                var job = await ledger.GetJobAsync(jobId, planning.Token);
                if (job is null || job.State is JobState.Cancelled or JobState.Failed)
                {
                    planning.Cancel();
                    return;
                }
            }
        }
        catch (OperationCanceledException) when (planning.IsCancellationRequested) { }
        catch (Exception e)
        {
            // The ledger failed: planning goes on, uninterruptible until it ends, rather than fail the job.
            log($"coordinator: cannot watch job {jobId} for a cancel while planning: {e.Message}");
        }
    }

    private async Task AssembleAsync(JobRecord job, CancellationToken ct)
    {
        using (var activity = MergeTelemetry.Source.StartActivity(MergeTelemetry.AssembleSpan))
        {
            activity?.SetTag(MergeTelemetry.JobTag, job.Id).SetTag(MergeTelemetry.SiloTag, silo);
            try
            {
                await engine.AssembleAsync(job, ct);
            }
            catch (Exception e) when (!ct.IsCancellationRequested)
            {
                activity?.SetStatus(ActivityStatusCode.Error, e.Message);
                log($"coordinator: job {job.Id} cannot be assembled: {e.Message}");
                await EndAsync(job, JobState.Failed, $"assemble: {e.Message.ReplaceLineEndings(" ")}", ct);
                return;
            }
        }
        await ledger.FinishJobAsync(job.Id, JobState.Succeeded, null, ct);
        log($"coordinator: job {job.Id} succeeded");
    }

    /// <summary>
    /// Cleans up after a failed or cancelled job, then records its end. Attempts still running learn of the end at
    /// their next renewal and release their tasks; cleanup waits for that (at most a lease) so it does not race them.
    /// </summary>
    private async Task EndAsync(JobRecord job, JobState state, string? error, CancellationToken ct)
    {
        var deadline = DateTimeOffset.UtcNow + options.TaskLease;
        while ((await ledger.CountTasksAsync(job.Id, ct)).Leased > 0 && DateTimeOffset.UtcNow < deadline)
        {
            await ledger.WaitForWorkAsync(options.ProgressInterval, ct);
        }
        try
        {
            await engine.CleanupAsync(job, ct);
        }
        catch (Exception e) when (!ct.IsCancellationRequested)
        {
            log($"coordinator: cleanup of job {job.Id} failed: {e.Message}");
        }
        await ledger.FinishJobAsync(job.Id, state, error, ct);
        log($"coordinator: job {job.Id} {state.ToString().ToLowerInvariant()}{(error is null ? "" : $": {error}")}");
    }

    private async Task HandOverAsync(long jobId)
    {
        try
        {
            await ledger.RenewCoordinatorAsync(jobId, silo, TimeSpan.Zero, CancellationToken.None);
        }
        catch (Exception e)
        {
            log($"coordinator: could not hand job {jobId} over (its lease will lapse): {e.Message}");
        }
    }
}
