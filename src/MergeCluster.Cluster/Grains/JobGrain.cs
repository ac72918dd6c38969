using System.Collections.Immutable;
using System.Diagnostics;
using MergeCluster.Cluster.Contracts;
using MergeCluster.Cluster.Silo;
using MergeCluster.Cluster.Telemetry;
using MergeCluster.Engine.Execution;
using MergeCluster.Safetensors;
using MergeCluster.Engine.Telemetry;
using MergeCluster.Merge.Recipes;
using Microsoft.Extensions.Logging;
using Orleans.Runtime.MembershipService.SiloMetadata;
using Orleans.Runtime.Placement;

namespace MergeCluster.Cluster.Grains;

/// <summary>
/// One job's coordinator. Submitting records the job and returns; planning, assembly and cleanup run in the
/// background of the activation, so no call waits on them. A one-second timer hands ready tasks to shard grains on
/// silos with free slots (leaves where their models are), follows the reports, notices tasks whose silo left the
/// cluster, and ends the job. The record is written to storage in batches, at most one write in flight: a finished
/// task costs at most one write (none per tensor), and a partial sum is deleted only once the task that consumed it
/// is durably done. A reminder brings the job back on another silo if this one dies; it resumes from the record and
/// reruns no finished task.
/// </summary>
internal sealed partial class JobGrain : Grain, IJobGrain, IRemindable
{
    public const int MaxAttempts = 3;
    private const string ReminderName = "resume";
    private static readonly TimeSpan Tick = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan ReminderPeriod = TimeSpan.FromMinutes(1);
    /// <summary>How long a failed or cancelled job waits for its running attempts to give up before it removes their files.</summary>
    private static readonly TimeSpan EndingGrace = TimeSpan.FromSeconds(30);
    /// <summary>Writes of the record are at least this far apart, so a burst of reports costs one write.</summary>
    private static readonly TimeSpan MinSaveInterval = TimeSpan.FromMilliseconds(200);
    /// <summary>
    /// Tasks a silo is handed beyond its slots, queued in the shard grain's wait for one: a slot that frees starts the
    /// next task at once, instead of idling through the report's round trip to this grain and the next dispatch.
    /// </summary>
    private const int QueuedPerSilo = 1;

    private readonly IPersistentState<JobRecord> _state;
    private readonly SiloIdentity _silo;
    private readonly IClusterMembershipService _membership;
    private readonly ISiloMetadataCache _metadata;
    private readonly JobGauges _gauges;
    private readonly ILogger<JobGrain> _log;
    private JobRecord _record = new();

    // The plan and the task graph, once planned or opened again after a resume.
    private IShardedJob? _job;
    private int[] _remaining = [];
    private List<int>[] _dependents = [];
    private readonly SortedSet<int> _ready = [];
    // Attempts handed to shard grains that have not reported back.
    private readonly Dictionary<int, TaskStarted> _running = [];
    // Tasks the record says were running when this activation started: asked whether they still run.
    private readonly HashSet<int> _unconfirmed = [];
    private readonly List<TaskReport> _early = [];

    private Task? _background;
    private IGrainTimer? _timer;
    private bool _pumping, _pumpAgain, _reminderRemoved;
    private DateTimeOffset? _endingSince;

    // Persistence: versions of the record asked to be saved, and saved.
    private long _version, _saved;
    private Task? _saveLoop;
    private readonly List<(long Version, TaskCompletionSource Done)> _waiters = [];
    private readonly List<int> _releaseAfterSave = [];

    public JobGrain([PersistentState("job", SiloHost.StorageName)] IPersistentState<JobRecord> state, SiloIdentity silo, IClusterMembershipService membership,
        ISiloMetadataCache metadata, JobGauges gauges, ILogger<JobGrain> log)
    {
        _state = state;
        _silo = silo;
        _membership = membership;
        _metadata = metadata;
        _gauges = gauges;
        _log = log;
    }

    private long Id => this.GetPrimaryKeyLong();

    public override Task OnActivateAsync(CancellationToken cancellationToken)
    {
        _record = _state.State.Clone();
        if (_record.Active)
        {
            for (int i = 0; i < _record.States.Length; i++)
                if ((TaskState)_record.States[i] == TaskState.Running) _unconfirmed.Add(i);
            LogResumed(_log, Id, _record.Phase.ToString(), _silo.Name, Count(TaskState.Done), _record.States.Length);
            StartTimer();
        }
        _gauges.Track(this);
        return Task.CompletedTask;
    }

    public override async Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        _gauges.Untrack(this);
        if (_record.Active && _saved < _version)
        {
            try { await SaveAsync().WaitAsync(TimeSpan.FromSeconds(5), cancellationToken); }
            catch (Exception e) { LogSaveFailed(_log, Id, ErrorText.OneLine(e)); }
        }
        if (_record.Active && reason.ReasonCode == DeactivationReasonCode.ShuttingDown)
        {
            // This silo is leaving: wake the job on another one now rather than at its next reminder.
            _ = GrainFactory.GetGrain<IJobGrain>(Id).Resume();
        }
    }

    public async Task Submit(JobSubmission submission)
    {
        if (_record.SubmittedAt is not null) return;
        _record = new JobRecord { Id = Id, Submission = submission, Phase = JobPhase.Queued, SubmittedAt = DateTimeOffset.UtcNow };
        await SaveAsync();
        await this.RegisterOrUpdateReminder(ReminderName, ReminderPeriod, ReminderPeriod);
        LogSubmitted(_log, Id, submission.RecipeSource);
        StartTimer();
        _ = PumpAsync();
    }

    public Task Resume()
    {
        if (_record.Active) _ = PumpAsync();
        return Task.CompletedTask;
    }

    public Task ReceiveReminder(string reminderName, TickStatus status) => Resume();

    public Task<bool> Cancel()
    {
        if (_record.SubmittedAt is null || _record.Phase is not (JobPhase.Queued or JobPhase.Running)) return Task.FromResult(false);
        End(JobPhase.Cancelled, "cancelled");
        LogCancelled(_log, Id);
        return Task.FromResult(true);
    }

    public Task TaskEnded(TaskReport report)
    {
        if (!_record.Active) return Task.CompletedTask;
        if (_job is null)
        {
            // Resumed and not opened yet: the report is applied once the task graph is back.
            _early.Add(report);
            return Task.CompletedTask;
        }
        Apply(report);
        _ = PumpAsync();
        return Task.CompletedTask;
    }

    public Task<JobStatus> GetStatus()
    {
        var r = _record;
        var notable = ImmutableArray.CreateBuilder<TaskSummary>();
        int retries = 0;
        for (int i = 0; i < r.States.Length; i++)
        {
            var state = (TaskState)r.States[i];
            retries += Math.Max(0, r.Attempts[i] - 1);
            if (notable.Count >= 50 || (state != TaskState.Running && state != TaskState.Failed && r.Attempts[i] <= 1)) continue;
            string name = _job?.Tasks[i].Name ?? $"task {i}";
            string kind = _job?.Tasks[i].Kind ?? "";
            string? silo = _running.TryGetValue(i, out var run) ? run.SiloName : r.Silos[i] >= 0 ? r.SiloNames[r.Silos[i]] : null;
            notable.Add(new TaskSummary(name, kind, state.ToString().ToLowerInvariant(), r.Attempts[i], silo, r.Errors.GetValueOrDefault(i)));
        }
        return Task.FromResult(new JobStatus(Id, r.Phase, Counts(), r.Error, r.SubmittedAt, r.FinishedAt, r.Output, r.Submission?.RecipeDirectory, r.Shape,
            r.Active ? _silo.Name : null, r.Phase is JobPhase.Failed or JobPhase.Cancelled && !r.FilesRemoved, retries, r.BytesRead, r.BytesWritten,
            notable.ToImmutable(), r.Writes, r.Submission?.Kind ?? JobKinds.Merge));
    }

    /// <summary>Pending, running (handed out), done and failed tasks: what the gauges sum over this silo's jobs.</summary>
    public TaskCounts Counts()
    {
        int pending = 0, running = 0, done = 0, failed = 0;
        foreach (byte s in _record.States)
        {
            switch ((TaskState)s)
            {
                case TaskState.Pending: pending++; break;
                case TaskState.Running: running++; break;
                case TaskState.Done: done++; break;
                default: failed++; break;
            }
        }
        return new TaskCounts(pending, running, done, failed);
    }

    private int Count(TaskState state) => _record.States.Count(s => s == (byte)state);

    private void StartTimer() =>
        _timer ??= this.RegisterGrainTimer(_ => PumpAsync(), new GrainTimerCreationOptions { DueTime = Tick, Period = Tick, KeepAlive = true });

    /// <summary>Moves the job on by one step; one pump at a time, and a pump asked for while one runs runs again after it.</summary>
    private async Task PumpAsync()
    {
        if (_pumping)
        {
            _pumpAgain = true;
            return;
        }
        _pumping = true;
        try
        {
            do
            {
                _pumpAgain = false;
                await StepAsync();
            }
            while (_pumpAgain);
        }
        catch (Exception e)
        {
            LogPumpFailed(_log, Id, ErrorText.OneLine(e));
        }
        finally
        {
            _pumping = false;
        }
    }

    private async Task StepAsync()
    {
        if (_background is { IsCompleted: false }) return;
        if (!_record.Active)
        {
            await FinishAsync();
            return;
        }
        switch (_record.Phase)
        {
            case JobPhase.Queued:
                InBackground(PlanAsync);
                return;
            case JobPhase.Running:
                if (_job is null)
                {
                    InBackground(OpenAsync);
                    return;
                }
                await ConfirmAsync();
                FindLost();
                if (_record.Phase != JobPhase.Running) return;
                if (Count(TaskState.Done) == _record.States.Length)
                {
                    InBackground(AssembleAsync);
                    return;
                }
                await DispatchAsync();
                return;
            default:
                // Failed or cancelled: once no attempt still runs (or they had their grace), its files go.
                FindLost();
                _endingSince ??= DateTimeOffset.UtcNow;
                if (_running.Count == 0 || DateTimeOffset.UtcNow - _endingSince > EndingGrace) InBackground(CleanupAsync);
                return;
        }
    }

    /// <summary>
    /// Runs a step's long work (planning, opening, assembly, cleanup) off the pump; when it ends the job moves on at
    /// once, not at the next tick. Work that failed is tried again at the next tick, not in a loop.
    /// </summary>
    private void InBackground(Func<Task> work)
    {
        _background = RunAsync();

        async Task RunAsync()
        {
            await Task.Yield();
            await work();
            _background = null;
            _ = PumpAsync();
        }
    }

    private async Task PlanAsync()
    {
        var submission = _record.Submission!;
        using var span = MergeTelemetry.Source.StartActivity(MergeTelemetry.PlanSpan, ActivityKind.Internal, MergeTelemetry.ParentOf(submission.TraceParent));
        span?.SetTag(MergeTelemetry.JobTag, Id).SetTag(MergeTelemetry.SiloTag, _silo.Name);
        IShardedJob job;
        try
        {
            var held = LiveSilo.All(_membership, _metadata).Select(s => (IReadOnlyCollection<string>)s.Models).ToList();
            job = await Task.Run(() => ClusterJobs.Plan(submission, _silo.Environment, held, Id));
        }
        catch (Exception e)
        {
            span?.SetStatus(ActivityStatusCode.Error, e.Message);
            LogPlanFailed(_log, Id, ErrorText.OneLine(e));
            End(JobPhase.Failed, $"plan: {ErrorText.OneLine(e)}");
            return;
        }
        if (_record.Phase != JobPhase.Queued)
        {
            // Cancelled while planning.
            MergeJob.Cleanup(job.Temps, job.Scratch);
            return;
        }
        span?.SetTag("mergecluster.tasks", job.Tasks.Count).SetTag(MergeTelemetry.BytesTag, job.InputBytes);
        var r = _record;
        r.Phase = JobPhase.Running;
        r.Shape = job.Shape.ToString();
        if (job is MergeJob merge)
        {
            r.TempOutput = merge.Files.TempOutput;
            r.TempIdentity = merge.Files.TempIdentity.ToString();
        }
        r.Candidates = ClusterJobs.CandidatesOf(job);
        r.Scratch = job.Scratch;
        r.Output = job.OutputPath;
        r.PlanDigest = job.Digest;
        r.States = new byte[job.Tasks.Count];
        r.Attempts = new byte[job.Tasks.Count];
        r.Silos = Enumerable.Repeat((short)-1, job.Tasks.Count).ToArray();
        Adopt(job);
        LogPlanned(_log, Id, submission.Kind, job.Tasks.Count, job.Shape.ToString(), job.InputBytes);
        // The files the plan created are job state: durable before any task writes into them.
        await SaveAsync();
    }

    /// <summary>A resumed job: the plan is derived again from the recipe and the preallocated output, and must have the recorded digest.</summary>
    private async Task OpenAsync()
    {
        var r = _record;
        var submission = r.Submission!;
        try
        {
            var temps = TempsOf(r);
            if (temps.Length > 0 && temps.All(t => !File.Exists(t.Path)) && r.Output is not null && Path.Exists(r.Output) && Count(TaskState.Done) == r.States.Length)
            {
                // The previous activation committed the output and died before it recorded the end.
                Succeed();
                return;
            }
            var job = await Task.Run(() => ClusterJobs.Open(submission, r.Shape!, temps, r.Scratch, _silo.Environment, r.PlanDigest!));
            if (job.Tasks.Count != r.States.Length) throw new InvalidOperationException($"the plan has {job.Tasks.Count} tasks, the record {r.States.Length}");
            Adopt(job);
        }
        catch (Exception e)
        {
            LogPlanFailed(_log, Id, ErrorText.OneLine(e));
            End(JobPhase.Failed, $"resume: {ErrorText.OneLine(e)}");
            return;
        }
        foreach (var report in _early) Apply(report);
        _early.Clear();
    }

    private void Adopt(IShardedJob job)
    {
        _job = job;
        int n = job.Tasks.Count;
        _remaining = new int[n];
        _dependents = new List<int>[n];
        for (int i = 0; i < n; i++) _dependents[i] = [];
        foreach (var task in job.Tasks)
            foreach (int d in task.DependsOn)
            {
                _dependents[d].Add(task.Index);
                if ((TaskState)_record.States[d] != TaskState.Done) _remaining[task.Index]++;
            }
        _ready.Clear();
        for (int i = 0; i < n; i++)
            if ((TaskState)_record.States[i] == TaskState.Pending && _remaining[i] == 0) _ready.Add(i);
    }

    /// <summary>Hands ready tasks to silos with free slots: the lowest-numbered first (a shard's tree finishes before the next shard's leaves pile up).</summary>
    private async Task DispatchAsync()
    {
        if (_ready.Count == 0) return;
        var silos = LiveSilo.All(_membership, _metadata);
        if (silos.Count == 0) return;
        var free = silos.ToDictionary(s => s.Address, s => s.Threads + QueuedPerSilo);
        foreach (var (index, run) in _running)
            if ((TaskState)_record.States[index] == TaskState.Running && free.ContainsKey(run.Silo)) free[run.Silo]--;
        var submission = _record.Submission!;
        using var span = MergeTelemetry.Source.StartActivity(MergeTelemetry.ScheduleSpan, ActivityKind.Internal, MergeTelemetry.ParentOf(submission.TraceParent));
        span?.SetTag(MergeTelemetry.JobTag, Id);
        foreach (int index in _ready.ToList())
        {
            if (_record.Phase != JobPhase.Running || free.Values.All(f => f <= 0)) break;
            var task = _job!.Tasks[index];
            var target = Choose(task, silos, free);
            if (target is null) continue;
            _ready.Remove(index);
            free[target.Address]--;
            int attempt = ++_record.Attempts[index];
            _record.States[index] = (byte)TaskState.Running;
            var order = new TaskOrder(Id, submission, _record.Shape!, _record.TempOutput ?? "", _record.Scratch, _record.PlanDigest!, index, task.Name, attempt, _record.TempIdentity,
                _record.Candidates.Count > 0 ? [.. _record.Candidates] : null);
            try
            {
                RequestContext.Set(IPlacementDirector.PlacementHintKey, target.Address);
                RequestContext.Set(ModelLocalityPlacement.ModelsKey, string.Join('\n', _job.FilesOf(task)));
                var started = await GrainFactory.GetGrain<IShardGrain>($"{Id}/{task.Name}").Run(order);
                // Reports are taken while this call is out: a quick task may have reported already.
                if ((TaskState)_record.States[index] == TaskState.Running)
                {
                    _running[index] = started;
                    if (started.Attempt != attempt) _record.Attempts[index] = (byte)Math.Max(attempt, started.Attempt);
                }
                SetSilo(index, started.SiloName);
                if (attempt > 1) LogRetry(_log, Id, task.Name, attempt, started.SiloName);
            }
            catch (Exception e)
            {
                // Not started (its silo is going, or a call timed out): it goes back and is handed out again later.
                LogDispatchFailed(_log, Id, task.Name, target.Name, ErrorText.OneLine(e));
                if ((TaskState)_record.States[index] == TaskState.Running && _record.Attempts[index] == attempt)
                {
                    _record.Attempts[index]--;
                    _record.States[index] = (byte)TaskState.Pending;
                    _ready.Add(index);
                }
                break;
            }
            finally
            {
                RequestContext.Remove(IPlacementDirector.PlacementHintKey);
                RequestContext.Remove(ModelLocalityPlacement.ModelsKey);
            }
        }
    }

    /// <summary>
    /// Where a task runs: a leaf only on a silo holding the most of its group's models (it waits for a slot there,
    /// unless no live silo holds any of them); any other task on the silo with most free slots. Null: not now.
    /// </summary>
    private LiveSilo? Choose(MergeTask task, IReadOnlyList<LiveSilo> silos, Dictionary<SiloAddress, int> free)
    {
        int most = 0;
        List<string>? files = null;
        if (task.Kind == TaskKinds.Leaf)
        {
            files = _job!.FilesOf(task).ToList();
            foreach (var silo in silos) most = Math.Max(most, files.Count(silo.Models.Contains));
        }
        LiveSilo? best = null;
        int bestFree = 0;
        foreach (var silo in silos)
        {
            int slots = free[silo.Address];
            if (slots <= bestFree) continue;
            if (most > 0 && files!.Count(silo.Models.Contains) < most) continue;
            (best, bestFree) = (silo, slots);
        }
        return best;
    }

    /// <summary>Attempts whose silo is no longer an active member died with it: they count, and the task is handed out again.</summary>
    private void FindLost()
    {
        if (_running.Count == 0) return;
        var members = _membership.CurrentSnapshot.Members;
        foreach (var (index, run) in _running.ToList())
        {
            if (members.TryGetValue(run.Silo, out var member) && member.Status is SiloStatus.Active or SiloStatus.ShuttingDown or SiloStatus.Stopping or SiloStatus.Joining) continue;
            _running.Remove(index);
            if ((TaskState)_record.States[index] != TaskState.Running || _record.Phase != JobPhase.Running) continue;
            string name = _job?.Tasks[index].Name ?? $"task {index}";
            LogLost(_log, Id, name, run.Attempt, run.SiloName);
            MergeTelemetry.Tasks.Add(1, new KeyValuePair<string, object?>(MergeTelemetry.StateTag, "lost"));
            Retry(index, name, $"lost with silo {run.SiloName}", permanent: false);
        }
    }

    /// <summary>Asks the shard grains of tasks that were running when the job resumed whether they still run.</summary>
    private async Task ConfirmAsync()
    {
        if (_unconfirmed.Count == 0) return;
        foreach (int index in _unconfirmed.ToList())
        {
            if ((TaskState)_record.States[index] != TaskState.Running)
            {
                _unconfirmed.Remove(index);
                continue;
            }
            TaskStarted? current;
            try
            {
                current = await GrainFactory.GetGrain<IShardGrain>($"{Id}/{_job!.Tasks[index].Name}").Current().WaitAsync(TimeSpan.FromSeconds(10));
            }
            catch (Exception)
            {
                // Its silo may be dying: asked again at the next tick.
                continue;
            }
            _unconfirmed.Remove(index);
            if (current is not null)
            {
                _running[index] = current;
                continue;
            }
            _record.States[index] = (byte)TaskState.Pending;
            if (_remaining[index] == 0) _ready.Add(index);
        }
    }

    private void Apply(TaskReport report)
    {
        int index = report.Task;
        if (index < 0 || index >= _record.States.Length) return;
        if (_running.TryGetValue(index, out var run) && run.Attempt == report.Attempt) _running.Remove(index);
        _unconfirmed.Remove(index);
        var state = (TaskState)_record.States[index];
        if (state == TaskState.Done || _job is null) return;
        var task = _job.Tasks[index];
        SetSilo(index, report.Silo);
        switch (report.Outcome)
        {
            case TaskOutcome.Done:
                // Any attempt's output will do: every attempt writes the same bytes, each committed by rename.
                _record.States[index] = (byte)TaskState.Done;
                _record.Errors.Remove(index);
                _record.BytesRead += report.BytesRead;
                _record.BytesWritten += report.BytesWritten;
                _ready.Remove(index);
                foreach (int d in _dependents[index])
                    if (--_remaining[d] == 0 && (TaskState)_record.States[d] == TaskState.Pending) _ready.Add(d);
                if (task.Kind is TaskKinds.Reduce or TaskKinds.Final) _releaseAfterSave.Add(index);
                MarkDirty();
                break;
            case TaskOutcome.Released when state == TaskState.Running && report.Attempt == _record.Attempts[index]:
                _record.States[index] = (byte)TaskState.Pending;
                _record.Attempts[index]--;
                if (_remaining[index] == 0) _ready.Add(index);
                break;
            case TaskOutcome.Failed when report.Redo >= 0 && report.Attempt == _record.Attempts[index] && _record.Phase == JobPhase.Running:
                Redo(index, report.Redo, report.Error);
                break;
            case TaskOutcome.Failed when report.Attempt == _record.Attempts[index] && _record.Phase == JobPhase.Running:
                Retry(index, task.Name, report.Error ?? "failed", report.Permanent);
                break;
        }
    }

    /// <summary>
    /// A task found the partial sum of <paramref name="producer"/> missing: storage lost the record of a consumer that
    /// was done (an emulator killed with unflushed writes) and the file went with it. The producer runs again, then the
    /// task; neither is charged an attempt, and a producer whose own inputs are gone is found out the same way.
    /// </summary>
    private void Redo(int index, int producer, string? error)
    {
        LogRedo(_log, Id, _job!.Tasks[index].Name, _job.Tasks[producer].Name, error ?? "");
        _record.Attempts[index]--;
        _record.States[index] = (byte)TaskState.Pending;
        if ((TaskState)_record.States[producer] == TaskState.Done)
        {
            _record.States[producer] = (byte)TaskState.Pending;
            foreach (int d in _dependents[producer]) _remaining[d]++;
            if (_remaining[producer] == 0) _ready.Add(producer);
        }
        if (_remaining[index] == 0) _ready.Add(index);
        MarkDirty();
    }

    /// <summary>After a failed or lost attempt: the task is handed out again, or, when that cannot help, the job fails.</summary>
    private void Retry(int index, string name, string error, bool permanent)
    {
        _record.Errors[index] = error;
        int attempts = _record.Attempts[index];
        if (permanent || attempts >= MaxAttempts)
        {
            _record.States[index] = (byte)TaskState.Failed;
            End(JobPhase.Failed, permanent ? $"task {name} failed: {error}" : $"task {name} failed after {attempts} attempts: {error}");
            return;
        }
        _record.States[index] = (byte)TaskState.Pending;
        if (_remaining[index] == 0) _ready.Add(index);
        MarkDirty();
    }

    /// <summary>Fails or cancels the job: running attempts are told to stop, and its files go once they have (see <see cref="StepAsync"/>).</summary>
    private void End(JobPhase phase, string error)
    {
        if (_record.Phase is not (JobPhase.Queued or JobPhase.Running)) return;
        _record.Phase = phase;
        _record.Error = error;
        _ready.Clear();
        foreach (var (index, run) in _running)
        {
            var grain = GrainFactory.GetGrain<IShardGrain>($"{Id}/{_job?.Tasks[index].Name}");
            _ = grain.Cancel(run.Attempt);
        }
        if (phase == JobPhase.Failed) LogFailed(_log, Id, error);
        MarkDirty();
        _ = PumpAsync();
    }

    private async Task AssembleAsync()
    {
        // Every done task durable first: a resumed job that found the output committed must know all its tasks were done.
        await SaveAsync();
        using var span = MergeTelemetry.Source.StartActivity(MergeTelemetry.AssembleSpan, ActivityKind.Internal, MergeTelemetry.ParentOf(_record.Submission!.TraceParent));
        span?.SetTag(MergeTelemetry.JobTag, Id).SetTag(MergeTelemetry.SiloTag, _silo.Name);
        var job = _job!;
        try
        {
            await Task.Run(job.Assemble);
        }
        catch (Exception e)
        {
            span?.SetStatus(ActivityStatusCode.Error, e.Message);
            End(JobPhase.Failed, $"assemble: {ErrorText.OneLine(e)}");
            return;
        }
        Succeed();
        await SaveAsync();
    }

    private void Succeed()
    {
        _record.Phase = JobPhase.Succeeded;
        _record.FinishedAt = DateTimeOffset.UtcNow;
        LogSucceeded(_log, Id, _record.Output ?? "", _record.States.Length, (_record.FinishedAt.Value - _record.SubmittedAt!.Value).TotalSeconds);
        MarkDirty();
    }

    /// <summary>The temporary outputs the plan created, as the record keeps them (the identity is what every silo checks before it opens one).</summary>
    private static ImmutableArray<OwnedTemp> TempsOf(JobRecord r) => ClusterJobs.TempsOf(r.TempOutput, r.TempIdentity, r.Candidates);

    private async Task CleanupAsync()
    {
        var r = _record;
        if (r.Planned)
        {
            var temps = TempsOf(r);
            await Task.Run(() => MergeJob.Cleanup(temps, r.Scratch));
        }
        r.FilesRemoved = true;
        r.FinishedAt = DateTimeOffset.UtcNow;
        await SaveAsync();
        LogEnded(_log, Id, r.Phase.ToString().ToLowerInvariant(), r.Error ?? "");
    }

    /// <summary>The job is final: no more timer, no more reminder; the activation goes when idle.</summary>
    private async Task FinishAsync()
    {
        _timer?.Dispose();
        _timer = null;
        if (_reminderRemoved || _saved < _version) return;
        try
        {
            if (await this.GetReminder(ReminderName) is { } reminder) await this.UnregisterReminder(reminder);
            _reminderRemoved = true;
        }
        catch (Exception e)
        {
            // Left in place it only wakes a finished job, which does nothing; tried again at the next wake.
            LogSaveFailed(_log, Id, ErrorText.OneLine(e));
        }
    }

    private void SetSilo(int index, string silo)
    {
        int i = _record.SiloNames.IndexOf(silo);
        if (i < 0)
        {
            _record.SiloNames.Add(silo);
            i = _record.SiloNames.Count - 1;
        }
        _record.Silos[index] = (short)i;
    }

    private void MarkDirty()
    {
        _version++;
        _saveLoop ??= SaveLoopAsync();
    }

    /// <summary>Completes once the record as it is now is in storage (retrying through an outage).</summary>
    private Task SaveAsync()
    {
        MarkDirty();
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _waiters.Add((_version, done));
        return done.Task;
    }

    private async Task SaveLoopAsync()
    {
        var backoff = TimeSpan.FromMilliseconds(500);
        var last = DateTimeOffset.MinValue;
        try
        {
            while (_saved < _version)
            {
                var wait = last + MinSaveInterval - DateTimeOffset.UtcNow;
                if (wait > TimeSpan.Zero) await Task.Delay(wait);
                long version = _version;
                var released = _releaseAfterSave.ToList();
                _releaseAfterSave.Clear();
                _record.Writes++;
                // A copy is written: the live record keeps changing while the write is in flight.
                _state.State = _record.Clone();
                try
                {
                    await _state.WriteStateAsync();
                }
                catch (Orleans.Storage.InconsistentStateException e)
                {
                    // The stored record is not the one this activation last wrote: a write whose answer was lost in an
                    // outage landed after all, or storage came back without its last writes. This activation, the
                    // job's only one, holds the newest record: take the stored version's tag and write it again.
                    LogConflict(_log, Id, ErrorText.OneLine(e));
                    _record.Writes--;
                    _releaseAfterSave.InsertRange(0, released);
                    try { await _state.ReadStateAsync(); }
                    catch (Exception read) { LogSaveFailed(_log, Id, ErrorText.OneLine(read)); await Task.Delay(backoff); }
                    continue;
                }
                catch (Exception e)
                {
                    _record.Writes--;
                    _releaseAfterSave.InsertRange(0, released);
                    LogSaveFailed(_log, Id, ErrorText.Innermost(e));
                    await Task.Delay(backoff);
                    backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, TimeSpan.FromSeconds(10).Ticks));
                    continue;
                }
                last = DateTimeOffset.UtcNow;
                backoff = TimeSpan.FromMilliseconds(500);
                _saved = version;
                for (int i = _waiters.Count - 1; i >= 0; i--)
                {
                    if (_waiters[i].Version > version) continue;
                    _waiters[i].Done.TrySetResult();
                    _waiters.RemoveAt(i);
                }
                if (released.Count > 0 && _job is { } job)
                    await Task.Run(() => { foreach (int t in released) job.Release(job.Tasks[t]); });
            }
        }
        finally
        {
            _saveLoop = null;
        }
    }



    [LoggerMessage(Level = LogLevel.Information, Message = "job {Job}: submitted ({Recipe})")]
    private static partial void LogSubmitted(ILogger logger, long job, string recipe);

    [LoggerMessage(Level = LogLevel.Information, Message = "job {Job}: resumed on silo {Silo} ({Phase}, {Done}/{Tasks} tasks done)")]
    private static partial void LogResumed(ILogger logger, long job, string phase, string silo, int done, int tasks);

    [LoggerMessage(Level = LogLevel.Information, Message = "job {Job}: planned {Kind}, {Tasks} tasks ({Shape}), {Bytes} input bytes")]
    private static partial void LogPlanned(ILogger logger, long job, string kind, int tasks, string shape, long bytes);

    [LoggerMessage(Level = LogLevel.Warning, Message = "job {Job}: cannot be planned: {Error}")]
    private static partial void LogPlanFailed(ILogger logger, long job, string error);

    [LoggerMessage(Level = LogLevel.Information, Message = "job {Job}: task {Task} attempt {Attempt} on silo {Silo}")]
    private static partial void LogRetry(ILogger logger, long job, string task, int attempt, string silo);

    [LoggerMessage(Level = LogLevel.Warning, Message = "job {Job}: task {Task} not handed to silo {Silo} (tried again later): {Error}")]
    private static partial void LogDispatchFailed(ILogger logger, long job, string task, string silo, string error);

    [LoggerMessage(Level = LogLevel.Warning, Message = "job {Job}: task {Task} attempt {Attempt} lost with silo {Silo}")]
    private static partial void LogLost(ILogger logger, long job, string task, int attempt, string silo);

    [LoggerMessage(Level = LogLevel.Warning, Message = "job {Job}: failed: {Error}")]
    private static partial void LogFailed(ILogger logger, long job, string error);

    [LoggerMessage(Level = LogLevel.Information, Message = "job {Job}: cancelled")]
    private static partial void LogCancelled(ILogger logger, long job);

    [LoggerMessage(Level = LogLevel.Information, Message = "job {Job}: succeeded: {Output} ({Tasks} tasks, {Seconds:0.0} s)")]
    private static partial void LogSucceeded(ILogger logger, long job, string output, int tasks, double seconds);

    [LoggerMessage(Level = LogLevel.Information, Message = "job {Job}: {State}, its files removed {Error}")]
    private static partial void LogEnded(ILogger logger, long job, string state, string error);

    [LoggerMessage(Level = LogLevel.Warning, Message = "job {Job}: storage: {Error}")]
    private static partial void LogSaveFailed(ILogger logger, long job, string error);

    [LoggerMessage(Level = LogLevel.Warning, Message = "job {Job}: task {Task} runs again after {Producer}, whose partial sum is gone: {Error}")]
    private static partial void LogRedo(ILogger logger, long job, string task, string producer, string error);

    [LoggerMessage(Level = LogLevel.Warning, Message = "job {Job}: the stored record changed under this activation; writing the current one over it: {Error}")]
    private static partial void LogConflict(ILogger logger, long job, string error);

    [LoggerMessage(Level = LogLevel.Warning, Message = "job {Job}: {Error}")]
    private static partial void LogPumpFailed(ILogger logger, long job, string error);
}
