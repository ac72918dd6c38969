using System.Collections.Concurrent;
using System.Diagnostics;
using MergeCluster.Engine.Ledger;
using MergeCluster.Engine.Telemetry;

namespace MergeCluster.Engine.Runtime;

/// <summary>
/// One task at a time: claims a ready task, runs it through the engine while renewing its lease, then completes,
/// fails or releases it. On drain it stops claiming and lets its task finish within the grace period, else releases it.
/// </summary>
public sealed class Worker(ILedger ledger, IJobEngine engine, string silo, RuntimeOptions options, Action<string> log, JobCache? jobs = null)
{
    private readonly JobCache _jobs = jobs ?? new JobCache(ledger);

    /// <summary>Works until <paramref name="drain"/> is signalled (then finishes or releases its task) or <paramref name="abort"/> stops everything.</summary>
    public async Task RunAsync(CancellationToken drain, CancellationToken abort)
    {
        using var stopping = CancellationTokenSource.CreateLinkedTokenSource(drain, abort);
        // The next claim, started as soon as a task's work is done so that it overlaps the commit of that task's
        // completion: under write load each commit waits tens of milliseconds for the WAL flush, per task.
        Task<TaskLease?>? next = null;
        while (!stopping.IsCancellationRequested)
        {
            TaskLease? lease;
            try
            {
                lease = await (next ?? ledger.ClaimTaskAsync(silo, options.TaskLease, abort));
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // The ledger's own retries are spent (a long outage): keep the silo up and try again later.
                next = null;
                log($"claim failed: {e.Message}");
                await IdleAsync(stopping.Token, afterError: true);
                continue;
            }
            next = null;
            if (lease is null)
            {
                await IdleAsync(stopping.Token);
                continue;
            }
            if (stopping.IsCancellationRequested)
            {
                await ReportAsync("released", ct => ledger.ReleaseTaskAsync(lease, ct));
                break;
            }
            await RunTaskAsync(lease, drain, abort, () => next = stopping.IsCancellationRequested ? null : ledger.ClaimTaskAsync(silo, options.TaskLease, abort));
        }
        await ReleaseUnstartedAsync(next);
    }

    /// <summary>Gives back a task claimed ahead that this worker will not run (it is draining or stopping).</summary>
    private async Task ReleaseUnstartedAsync(Task<TaskLease?>? claim)
    {
        if (claim is null) return;
        try
        {
            if (await claim is { } lease) await ReportAsync("released", ct => ledger.ReleaseTaskAsync(lease, ct));
        }
        catch (Exception e)
        {
            // Unreleased, its lease simply expires and another silo runs it.
            log($"claim ahead abandoned: {e.Message}");
        }
    }

    /// <summary>Waits for a notification or the poll interval; after a ledger error, a longer pause. Never throws.</summary>
    private async Task IdleAsync(CancellationToken ct, bool afterError = false)
    {
        try
        {
            if (afterError) await Task.Delay(options.PollInterval * 5, ct);
            else await ledger.WaitForWorkAsync(options.PollInterval, ct);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            log($"waiting for work failed: {e.Message}");
        }
    }

    private async Task RunTaskAsync(TaskLease lease, CancellationToken drain, CancellationToken abort, Action workDone)
    {
        using var activity = MergeTelemetry.Source.StartActivity(MergeTelemetry.TaskSpan, ActivityKind.Consumer, MergeTelemetry.ParentOf(lease.TraceParent));
        activity?.SetTag(MergeTelemetry.JobTag, lease.JobId)
            .SetTag(MergeTelemetry.TaskTag, lease.Name)
            .SetTag(MergeTelemetry.KindTag, lease.Kind)
            .SetTag(MergeTelemetry.SiloTag, silo)
            .SetTag(MergeTelemetry.BytesTag, lease.Bytes)
            .SetTag(MergeTelemetry.AttemptTag, lease.Attempt);
        if (lease.Attempt > 1) MergeTelemetry.Retries.Add(1);
        log($"claimed {Describe(lease)}");

        await using var keeper = new LeaseKeeper(ct => ledger.RenewTaskAsync(lease, options.TaskLease, ct), options.RenewEvery, options.TaskLease, log);
        using var run = CancellationTokenSource.CreateLinkedTokenSource(keeper.Lost, abort);
        // On drain the task gets the grace period to finish; after it, it is cancelled and released.
        using var graceful = drain.Register(() => run.CancelAfter(options.DrainGrace));

        string outcome;
        try
        {
            var job = await _jobs.GetAsync(lease.JobId, run.Token);
            await engine.RunTaskAsync(job, lease, run.Token);
            workDone();
            outcome = await ReportAsync("done", ct => ledger.CompleteTaskAsync(lease, ct));
            if (outcome == "done") await TaskDoneAsync(job, lease);
        }
        catch (Exception) when (keeper.IsLost)
        {
            log($"abandoned {Describe(lease)}: {keeper.Reason}");
            // Gives the task back if no other attempt took it (the job ended, or the ledger was unreachable for a
            // lease period): the coordinator then knows no attempt is still writing when it cleans up.
            outcome = await ReportAsync("released", ct => ledger.ReleaseTaskAsync(lease, ct));
        }
        catch (LedgerException e)
        {
            // The ledger failed us (reading the job row), not the task: no attempt is charged for it.
            log($"{Describe(lease)} interrupted by the ledger: {e.Message}");
            outcome = await ReportAsync("released", ct => ledger.ReleaseTaskAsync(lease, ct));
        }
        catch (Exception) when (run.IsCancellationRequested)
        {
            // Draining (or stopping): whatever the engine threw while being cancelled, the task is given back.
            outcome = await ReportAsync("released", ct => ledger.ReleaseTaskAsync(lease, ct));
        }
        catch (Exception e)
        {
            bool permanent = e is PermanentTaskException;
            var error = e.Message.ReplaceLineEndings(" ");
            activity?.SetStatus(ActivityStatusCode.Error, error);
            log($"{Describe(lease)} failed{(permanent ? " permanently" : "")}: {error}");
            outcome = await ReportAsync("failed", ct => ledger.FailTaskAsync(lease, error, permanent, ct));
        }
        activity?.SetTag(MergeTelemetry.StateTag, outcome);
        MergeTelemetry.Tasks.Add(1, new KeyValuePair<string, object?>(MergeTelemetry.StateTag, outcome));
        log($"{outcome} {Describe(lease)}");
    }

    /// <summary>
    /// Tells the ledger how the attempt ended. "lost" when the ledger refuses (another attempt holds the task) or
    /// cannot be reached: the lease then expires and the task runs again, which attempt-scoped scratch makes safe.
    /// </summary>
    private async Task<string> ReportAsync(string outcome, Func<CancellationToken, Task<bool>> report)
    {
        try
        {
            return await report(CancellationToken.None) ? outcome : "lost";
        }
        catch (Exception e)
        {
            log($"could not record '{outcome}' in the ledger: {e.Message}");
            return "lost";
        }
    }

    private async Task TaskDoneAsync(JobRecord job, TaskLease lease)
    {
        try { await engine.TaskDoneAsync(job, lease, CancellationToken.None); }
        catch (Exception e) { log($"after {Describe(lease)}: {e.Message}"); }
    }

    private static string Describe(TaskLease lease) => $"job {lease.JobId} task {lease.Name} (attempt {lease.Attempt})";
}

/// <summary>Job rows as a silo's workers need them (recipe, directory, trace): read once per job and silo, not once per task.</summary>
public sealed class JobCache(ILedger ledger)
{
    private readonly ConcurrentDictionary<long, JobRecord> _jobs = new();

    public async Task<JobRecord> GetAsync(long jobId, CancellationToken ct)
    {
        if (_jobs.TryGetValue(jobId, out var job)) return job;
        job = await ledger.GetJobAsync(jobId, ct) ?? throw new InvalidOperationException($"job {jobId} is not in the ledger");
        if (_jobs.Count >= 64) _jobs.Clear();
        return _jobs[jobId] = job;
    }
}
