using MergeCluster.Engine.Telemetry;

namespace MergeCluster.Engine.Ledger;

/// <summary>
/// The embedded mode's ledger: the same semantics as the PostgreSQL ledger (leases with expiry, bounded attempts,
/// dependencies, coordinator lease, cancellation), held in memory under one lock.
/// </summary>
public sealed class MemoryLedger(int maxAttempts = TaskGraph.DefaultMaxAttempts, TimeProvider? time = null) : ILedger
{
    private sealed class Job(JobRecord record)
    {
        public JobRecord Record = record;
        public readonly List<Work> Tasks = [];
        public bool Planned;
        /// <summary>Tasks not yet done: the completion that brings it to zero wakes the coordinator.</summary>
        public int Open;
    }

    private sealed class Work(long id, long jobId, TaskSpec spec, int remainingDeps)
    {
        public readonly long Id = id;
        public readonly long JobId = jobId;
        public readonly TaskSpec Spec = spec;
        public readonly List<Work> Dependents = [];
        public int RemainingDeps = remainingDeps;
        public TaskState State;
        public int Attempts;
        public string? Silo;
        public DateTimeOffset? LeaseUntil;
        public DateTimeOffset? StartedAt, FinishedAt;
        public string? Error;

        public TaskRecord ToRecord() => new(Id, Spec.Name, Spec.Kind, State, Attempts, Silo, LeaseUntil, Error, Spec.Bytes, StartedAt, FinishedAt);
    }

    private readonly TimeProvider _time = time ?? TimeProvider.System;
    private readonly Lock _lock = new();
    private readonly Dictionary<string, SiloRecord> _silos = new(StringComparer.Ordinal);
    private readonly SortedDictionary<long, Job> _jobs = [];
    private readonly Dictionary<long, Work> _tasks = [];
    private long _nextJob, _nextTask;
    private readonly WorkSignal _work = new();
    private readonly WorkSignal _jobChange = new();

    private DateTimeOffset Now => _time.GetUtcNow();

    // ---- membership ----

    public Task RegisterSiloAsync(SiloRecord silo, CancellationToken ct)
    {
        lock (_lock) _silos[silo.Name] = silo with { Heartbeat = Now };
        return Task.CompletedTask;
    }

    public Task HeartbeatAsync(string silo, CancellationToken ct)
    {
        lock (_lock)
        {
            if (_silos.TryGetValue(silo, out var record)) _silos[silo] = record with { Heartbeat = Now };
        }
        return Task.CompletedTask;
    }

    public Task DeregisterSiloAsync(string silo, CancellationToken ct)
    {
        lock (_lock) _silos.Remove(silo);
        return Task.CompletedTask;
    }

    public Task<IReadOnlyList<SiloRecord>> LiveSilosAsync(TimeSpan within, CancellationToken ct)
    {
        lock (_lock)
        {
            var since = Now - within;
            return Task.FromResult<IReadOnlyList<SiloRecord>>(_silos.Values.Where(s => s.Heartbeat > since).OrderBy(s => s.Name, StringComparer.Ordinal).ToList());
        }
    }

    // ---- jobs ----

    public Task<long> SubmitJobAsync(JobSubmission job, CancellationToken ct)
    {
        long id;
        lock (_lock)
        {
            id = ++_nextJob;
            _jobs[id] = new Job(new JobRecord(id, JobState.Queued, job.RecipeText, job.RecipeDirectory, job.Options,
                null, null, job.TraceParent, Now, null, null));
        }
        _jobChange.Pulse();
        return Task.FromResult(id);
    }

    public Task<JobRecord?> GetJobAsync(long jobId, CancellationToken ct)
    {
        lock (_lock) return Task.FromResult(_jobs.GetValueOrDefault(jobId)?.Record);
    }

    public Task<IReadOnlyList<JobRecord>> ListJobsAsync(int limit, CancellationToken ct)
    {
        lock (_lock) return Task.FromResult<IReadOnlyList<JobRecord>>(_jobs.Values.Reverse().Take(limit).Select(j => j.Record).ToList());
    }

    public Task<bool> CancelJobAsync(long jobId, CancellationToken ct)
    {
        bool cancelled;
        lock (_lock)
        {
            cancelled = _jobs.TryGetValue(jobId, out var job) && IsActive(job.Record.State);
            if (cancelled) job!.Record = job.Record with { State = JobState.Cancelled, Error = job.Record.Error ?? "cancelled" };
        }
        if (cancelled)
        {
            _work.Pulse();
            _jobChange.Pulse();
        }
        return Task.FromResult(cancelled);
    }

    public Task<JobRecord?> TryAcquireCoordinatorAsync(string silo, TimeSpan lease, CancellationToken ct)
    {
        lock (_lock)
        {
            var now = Now;
            var job = _jobs.Values.FirstOrDefault(j => j.Record.FinishedAt is null && !(j.Record.CoordinatorLeaseUntil > now));
            if (job is null) return Task.FromResult<JobRecord?>(null);
            job.Record = job.Record with { Coordinator = silo, CoordinatorLeaseUntil = now + lease };
            return Task.FromResult<JobRecord?>(job.Record);
        }
    }

    public Task<bool> RenewCoordinatorAsync(long jobId, string silo, TimeSpan lease, CancellationToken ct)
    {
        lock (_lock)
        {
            if (!_jobs.TryGetValue(jobId, out var job) || job.Record.Coordinator != silo || job.Record.FinishedAt is not null) return Task.FromResult(false);
            job.Record = job.Record with { CoordinatorLeaseUntil = Now + lease };
            return Task.FromResult(true);
        }
    }

    public Task AddTasksAsync(long jobId, string silo, IReadOnlyList<TaskSpec> tasks, CancellationToken ct, string? options = null)
    {
        var remaining = TaskGraph.Validate(tasks);
        lock (_lock)
        {
            if (!_jobs.TryGetValue(jobId, out var job) || job.Planned || job.Record.Coordinator != silo || job.Record.State != JobState.Queued) return Task.CompletedTask;
            var byName = new Dictionary<string, Work>(StringComparer.Ordinal);
            for (int i = 0; i < tasks.Count; i++)
            {
                var work = new Work(++_nextTask, jobId, tasks[i], remaining[i]);
                byName[tasks[i].Name] = work;
                _tasks[work.Id] = work;
                job.Tasks.Add(work);
            }
            foreach (var work in job.Tasks)
            {
                foreach (var dep in work.Spec.DependsOn.Distinct(StringComparer.Ordinal)) byName[dep].Dependents.Add(work);
            }
            job.Planned = true;
            job.Open = job.Tasks.Count;
            job.Record = job.Record with { State = JobState.Running, Options = options ?? job.Record.Options };
        }
        _work.Pulse();
        return Task.CompletedTask;
    }

    public Task FinishJobAsync(long jobId, JobState state, string? error, CancellationToken ct)
    {
        lock (_lock)
        {
            if (_jobs.TryGetValue(jobId, out var job) && job.Record.FinishedAt is null)
            {
                var r = job.Record;
                job.Record = r with
                {
                    State = r.State is JobState.Failed or JobState.Cancelled ? r.State : state,
                    Error = r.Error ?? error,
                    FinishedAt = Now,
                    Coordinator = null,
                    CoordinatorLeaseUntil = null,
                };
            }
        }
        _work.Pulse();
        _jobChange.Pulse();
        return Task.CompletedTask;
    }

    // ---- tasks ----

    public Task<TaskLease?> ClaimTaskAsync(string silo, TimeSpan lease, CancellationToken ct)
    {
        lock (_lock)
        {
            var now = Now;
            if (FailExhaustedLeases(now)) _jobChange.Pulse();
            Work? best = null;
            int bestRank = int.MaxValue;
            foreach (var job in _jobs.Values)
            {
                if (job.Record.State != JobState.Running) continue;
                foreach (var t in job.Tasks)
                {
                    bool free = t.State == TaskState.Pending || (t.State == TaskState.Leased && t.LeaseUntil <= now);
                    if (!free || t.RemainingDeps > 0 || t.Attempts >= maxAttempts) continue;
                    // Same order as the SQL: this silo's preferred tasks, then unpreferred ones, then other silos'.
                    int rank = t.Spec.PreferredSilo == silo ? 0 : t.Spec.PreferredSilo is null ? 1 : 2;
                    if (rank < bestRank) (best, bestRank) = (t, rank);
                    if (rank == 0) break;
                }
                if (bestRank == 0) break;
            }
            if (best is null) return Task.FromResult<TaskLease?>(null);
            if (best.State == TaskState.Leased) MergeTelemetry.LeaseExpiries.Add(1);
            best.State = TaskState.Leased;
            best.Attempts++;
            best.Silo = silo;
            best.LeaseUntil = now + lease;
            best.StartedAt = now;
            best.FinishedAt = null;
            var jobRecord = _jobs[best.JobId].Record;
            return Task.FromResult<TaskLease?>(new TaskLease(best.JobId, best.Id, best.Spec.Name, best.Spec.Kind, best.Spec.Payload,
                best.Attempts, silo, now + lease, jobRecord.TraceParent, best.Spec.Bytes));
        }
    }

    /// <summary>
    /// A task whose last attempt's lease expired can never be claimed again: it fails its job instead of hanging it.
    /// True when a job failed.
    /// </summary>
    private bool FailExhaustedLeases(DateTimeOffset now)
    {
        bool failed = false;
        foreach (var t in _tasks.Values)
        {
            if (t.State != TaskState.Leased || t.LeaseUntil > now || t.Attempts < maxAttempts) continue;
            t.State = TaskState.Failed;
            t.LeaseUntil = null;
            t.FinishedAt = now;
            t.Error = TaskGraph.LeaseExpiredError(t.Spec.Name, t.Attempts);
            MergeTelemetry.LeaseExpiries.Add(1);
            failed |= FailJob(_jobs[t.JobId], t.Error);
        }
        return failed;
    }

    /// <summary>True when the job was still active and is now failed.</summary>
    private static bool FailJob(Job job, string error)
    {
        if (!IsActive(job.Record.State)) return false;
        job.Record = job.Record with { State = JobState.Failed, Error = error };
        return true;
    }

    private static bool IsActive(JobState state) => state is JobState.Queued or JobState.Running;

    /// <summary>The task if this attempt still holds its lease (expired but not yet taken over counts as held).</summary>
    private Work? Held(TaskLease lease) =>
        _tasks.TryGetValue(lease.TaskId, out var t) && t.State == TaskState.Leased && t.Silo == lease.Silo && t.Attempts == lease.Attempt ? t : null;

    public Task<bool> RenewTaskAsync(TaskLease lease, TimeSpan duration, CancellationToken ct)
    {
        lock (_lock)
        {
            if (Held(lease) is not { } t || _jobs[t.JobId].Record.State != JobState.Running) return Task.FromResult(false);
            t.LeaseUntil = Now + duration;
            return Task.FromResult(true);
        }
    }

    public Task<bool> CompleteTaskAsync(TaskLease lease, CancellationToken ct)
    {
        bool last;
        lock (_lock)
        {
            if (Held(lease) is not { } t) return Task.FromResult(false);
            t.State = TaskState.Done;
            t.LeaseUntil = null;
            t.FinishedAt = Now;
            foreach (var d in t.Dependents) d.RemainingDeps--;
            last = --_jobs[t.JobId].Open == 0;
        }
        _work.Pulse();
        if (last) _jobChange.Pulse();
        return Task.FromResult(true);
    }

    public Task<bool> FailTaskAsync(TaskLease lease, string error, bool permanent, CancellationToken ct)
    {
        bool jobFailed = false;
        lock (_lock)
        {
            if (Held(lease) is not { } t) return Task.FromResult(false);
            bool final = permanent || t.Attempts >= maxAttempts;
            t.State = final ? TaskState.Failed : TaskState.Pending;
            t.LeaseUntil = null;
            t.FinishedAt = Now;
            t.Error = error;
            if (final) jobFailed = FailJob(_jobs[t.JobId], TaskGraph.JobError(t.Spec.Name, t.Attempts, error, permanent));
        }
        _work.Pulse();
        if (jobFailed) _jobChange.Pulse();
        return Task.FromResult(true);
    }

    public Task<bool> ReleaseTaskAsync(TaskLease lease, CancellationToken ct)
    {
        lock (_lock)
        {
            if (Held(lease) is not { } t) return Task.FromResult(false);
            t.State = TaskState.Pending;
            t.Attempts--;
            t.LeaseUntil = null;
        }
        _work.Pulse();
        return Task.FromResult(true);
    }

    public Task<IReadOnlyList<TaskRecord>> ListTasksAsync(long jobId, CancellationToken ct)
    {
        lock (_lock)
        {
            IReadOnlyList<TaskRecord> tasks = _jobs.TryGetValue(jobId, out var job) ? job.Tasks.Select(t => t.ToRecord()).ToList() : [];
            return Task.FromResult(tasks);
        }
    }

    public Task<TaskCounts> CountTasksAsync(long jobId, CancellationToken ct)
    {
        lock (_lock)
        {
            var tasks = _jobs.TryGetValue(jobId, out var job) ? job.Tasks : [];
            int Count(TaskState s) => tasks.Count(t => t.State == s);
            return Task.FromResult(new TaskCounts(Count(TaskState.Pending), Count(TaskState.Leased), Count(TaskState.Done), Count(TaskState.Failed)));
        }
    }

    public Task WaitForWorkAsync(TimeSpan timeout, CancellationToken ct) => _work.WaitAsync(timeout, _time, ct);

    public Task WaitForJobChangeAsync(TimeSpan timeout, CancellationToken ct) => _jobChange.WaitAsync(timeout, _time, ct);

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
