using System.Diagnostics;
using MergeCluster.Cluster.Contracts;
using MergeCluster.Cluster.Silo;
using MergeCluster.Engine.Execution;
using MergeCluster.Engine.Telemetry;
using Microsoft.Extensions.Logging;

namespace MergeCluster.Cluster.Grains;

/// <summary>
/// Runs one task of a job's key shard on this silo, in the background of the activation: the call that starts it
/// returns at once, the task waits for one of the silo's slots, runs on a thread of its own, and its outcome is
/// reported to the job grain (again and again until the job grain takes it). Then the activation goes, so a retry
/// is placed afresh. On a silo's graceful shutdown a running task gets <see cref="DrainGrace"/> to finish, then it
/// is cancelled and handed back (Released, no attempt charged).
/// </summary>
[ModelLocalityPlacement]
internal sealed partial class ShardGrain(OpenJobs jobs, TaskSlots slots, SiloIdentity silo, ILocalSiloDetails local, ILogger<ShardGrain> log) : Grain, IShardGrain
{
    /// <summary>How long a draining silo lets a running task finish before it hands it back.</summary>
    public static readonly TimeSpan DrainGrace = TimeSpan.FromSeconds(20);

    private TaskOrder? _order;
    private CancellationTokenSource? _cancel;
    private Task? _work;
    // The attempt is computing; once it only reports its outcome, the next attempt may start here.
    private bool _executing;
    // The attempt has its task slot; before that it is only queued here (the job grain hands out one task per silo
    // beyond its slots, so a slot never idles through a report's round trip) and a draining silo hands it back at once.
    private bool _computing;

    public Task<TaskStarted> Run(TaskOrder order)
    {
        // The job grain hands out the next attempt as soon as it takes a report, while the reporting call is still
        // out: waiting for it to return would answer with the finished attempt, and the new one would never run.
        if (_executing && _order is not null)
            return Task.FromResult(new TaskStarted(_order.Attempt, local.SiloAddress, silo.Name));
        _order = order;
        _cancel?.Dispose();
        _cancel = new CancellationTokenSource();
        _executing = true;
        _computing = false;
        // The task may run longer than the idle-collection age; the activation goes when the report is taken.
        DelayDeactivation(TimeSpan.FromDays(1));
        var parent = Activity.Current?.Context ?? MergeTelemetry.ParentOf(order.Submission.TraceParent);
        _work = RunAsync(order, parent, _cancel.Token);
        return Task.FromResult(new TaskStarted(order.Attempt, local.SiloAddress, silo.Name));
    }

    public Task Cancel(int attempt)
    {
        if (_order?.Attempt == attempt) _cancel?.Cancel();
        return Task.CompletedTask;
    }

    public Task<TaskStarted?> Current()
    {
        if (_work is { IsCompleted: false } && _order is not null)
            return Task.FromResult<TaskStarted?>(new TaskStarted(_order.Attempt, local.SiloAddress, silo.Name));
        if (_work is null) DeactivateOnIdle();
        return Task.FromResult<TaskStarted?>(null);
    }

    private async Task RunAsync(TaskOrder order, ActivityContext parent, CancellationToken ct)
    {
        TaskReport report;
        using (var span = MergeTelemetry.Source.StartActivity(MergeTelemetry.TaskSpan, ActivityKind.Consumer, parent))
        {
            span?.SetTag(MergeTelemetry.JobTag, order.Job)
                .SetTag(MergeTelemetry.TaskTag, order.TaskName)
                .SetTag(MergeTelemetry.SiloTag, silo.Name)
                .SetTag(MergeTelemetry.AttemptTag, order.Attempt);
            if (order.Attempt > 1) MergeTelemetry.Retries.Add(1);
            report = await ExecuteAsync(order, span, ct);
            span?.SetTag(MergeTelemetry.StateTag, StateOf(report.Outcome));
            if (report.Outcome == TaskOutcome.Failed) span?.SetStatus(ActivityStatusCode.Error, report.Error);
        }
        MergeTelemetry.Tasks.Add(1, new KeyValuePair<string, object?>(MergeTelemetry.StateTag, StateOf(report.Outcome)));
        LogEnded(log, order.Job, order.TaskName, order.Attempt, StateOf(report.Outcome), report.Error ?? "");
        _executing = false;
        await ReportAsync(order, report);
        // Unless a later attempt started here meanwhile, the activation goes, so a retry is placed afresh.
        if (ReferenceEquals(_order, order)) DeactivateOnIdle();
    }

    private async Task<TaskReport> ExecuteAsync(TaskOrder order, Activity? span, CancellationToken ct)
    {
        // Taken on the task's thread and given back in the finally below, whatever happens: the flush needs it too.
        OpenJobs.Lease? lease = null;
        try
        {
            MergeTask task;
            TaskBytes bytes;
            using (await slots.AcquireAsync(ct))
            {
                _computing = true;
                LogStarted(log, order.Job, order.TaskName, order.Attempt);
                // A thread of its own: the task computes for seconds, and neither the grain's scheduler nor the thread pool should wait on it.
                (task, bytes) = await Task.Factory.StartNew(() =>
                {
                    try
                    {
                        lease = jobs.Acquire(order);
                    }
                    catch (Exception e) when (e is not OperationCanceledException)
                    {
                        // This silo sees other inputs than the planner did (a copy still syncing, a corrupt local file):
                        // another attempt, perhaps on another silo, may see the right ones.
                        throw new JobOpenException(e);
                    }
                    var t = lease.Run.Job.Tasks[order.Task];
                    span?.SetTag(MergeTelemetry.KindTag, t.Kind).SetTag(MergeTelemetry.BytesTag, t.Bytes);
                    try
                    {
                        return (t, lease.Run.Run(t, order.Attempt, ct));
                    }
                    catch (PartialSumMissingException e)
                    {
                        throw new RedoException(e, ((MergeJob)lease.Run.Job).ProducerOf(e.Shard, e.Node).Index);
                    }
                }, ct, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            }
            // The slot is free again: the task queued here computes while the disk takes this one's bytes. The task
            // is reported done only once they are durable.
            Debug.Assert(lease is not null, "the lease is taken before the task runs");
            await Task.Factory.StartNew(() => lease.Run.Flush(task), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            return new TaskReport(order.Task, order.Attempt, TaskOutcome.Done, null, false, silo.Name, bytes.Read, bytes.Written);
        }
        catch (Exception) when (ct.IsCancellationRequested)
        {
            return new TaskReport(order.Task, order.Attempt, TaskOutcome.Released, null, false, silo.Name, 0, 0);
        }
        catch (RedoException e)
        {
            return new TaskReport(order.Task, order.Attempt, TaskOutcome.Failed, ErrorText.OneLine(e.InnerException!), false, silo.Name, 0, 0, e.Task);
        }
        catch (JobOpenException e)
        {
            return new TaskReport(order.Task, order.Attempt, TaskOutcome.Failed, ErrorText.OneLine(e.InnerException!), false, silo.Name, 0, 0);
        }
        catch (Exception e)
        {
            return new TaskReport(order.Task, order.Attempt, TaskOutcome.Failed, ErrorText.OneLine(e), MergeJob.IsPermanent(e), silo.Name, 0, 0);
        }
        finally
        {
            lease?.Dispose();
        }
    }

    /// <summary>Until the job grain has the report: it may be moving to another silo, or storage may be down while it reactivates.</summary>
    private async Task ReportAsync(TaskOrder order, TaskReport report)
    {
        var job = GrainFactory.GetGrain<IJobGrain>(order.Job);
        var delay = TimeSpan.FromMilliseconds(200);
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                await job.TaskEnded(report);
                return;
            }
            catch (Exception e)
            {
                LogReportFailed(log, order.Job, order.TaskName, attempt, ErrorText.OneLine(e));
                await Task.Delay(delay);
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(5).Ticks));
            }
        }
    }

    public override async Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        if (_work is { IsCompleted: false } work)
        {
            // Graceful shutdown (or any other deactivation while a task runs): let it finish for a while, then hand it
            // back; one only queued for a slot goes back at once.
            if (!_computing) _cancel?.Cancel();
            await Task.WhenAny(work, Task.Delay(DrainGrace, cancellationToken));
            if (!work.IsCompleted)
            {
                _cancel?.Cancel();
                await Task.WhenAny(work, Task.Delay(TimeSpan.FromSeconds(5), CancellationToken.None));
            }
        }
        _cancel?.Dispose();
    }

    private static string StateOf(TaskOutcome outcome) => outcome switch
    {
        TaskOutcome.Done => "done",
        TaskOutcome.Failed => "failed",
        _ => "released",
    };


    [LoggerMessage(Level = LogLevel.Information, Message = "job {Job} task {Task} (attempt {Attempt}): started")]
    private static partial void LogStarted(ILogger logger, long job, string task, int attempt);

    [LoggerMessage(Level = LogLevel.Information, Message = "job {Job} task {Task} (attempt {Attempt}): {Outcome} {Error}")]
    private static partial void LogEnded(ILogger logger, long job, string task, int attempt, string outcome, string error);

    [LoggerMessage(Level = LogLevel.Warning, Message = "job {Job} task {Task}: report not taken yet (try {Try}), retrying: {Error}")]
    private static partial void LogReportFailed(ILogger logger, long job, string task, int @try, string error);
}

/// <summary>Opening a job on this silo failed: retried, since the next attempt may run where the inputs are right.</summary>
internal sealed class JobOpenException(Exception inner) : Exception(inner.Message, inner);

/// <summary>A task found an input partial sum missing: its producer runs again, then this task.</summary>
internal sealed class RedoException(Exception inner, int task) : Exception(inner.Message, inner)
{
    public int Task { get; } = task;
}
