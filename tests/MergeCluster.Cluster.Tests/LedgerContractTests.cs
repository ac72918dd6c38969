using System.Collections.Concurrent;
using MergeCluster.Cluster.Ledger;
using MergeCluster.Cluster.Tests.Infrastructure;
using MergeCluster.Engine.Ledger;

namespace MergeCluster.Cluster.Tests;

/// <summary>
/// What every ledger must do, run against both: the embedded mode's memory ledger and the cluster's PostgreSQL one.
/// Each test gets a fresh, empty ledger.
/// </summary>
public abstract class LedgerContractTests : IAsyncLifetime
{
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(5);
    private static readonly TimeSpan Short = TimeSpan.FromMilliseconds(500);
    /// <summary>Comfortably longer than <see cref="Short"/>, so a short lease has expired by then.</summary>
    private static readonly TimeSpan PastShort = TimeSpan.FromMilliseconds(1200);

    protected ILedger Ledger { get; private set; } = null!;

    protected abstract Task<ILedger> OpenAsync();

    public async Task InitializeAsync() => Ledger = await OpenAsync();

    public async Task DisposeAsync() => await Ledger.DisposeAsync();

    private static TaskSpec Spec(string name, params string[] dependsOn) => new(name, "test", $"payload of {name}", dependsOn, 100);

    /// <summary>Submits a job and plans it as coordinator "coord"; returns its id.</summary>
    private async Task<long> PlannedJobAsync(params TaskSpec[] tasks)
    {
        long id = await Ledger.SubmitJobAsync(new JobSubmission("recipe", "/recipes", "", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), default);
        var job = await Ledger.TryAcquireCoordinatorAsync("coord", Long, default);
        Assert.Equal(id, job!.Id);
        await Ledger.AddTasksAsync(id, "coord", tasks, default);
        return id;
    }

    private async Task<TaskRecord> TaskAsync(long job, string name) => (await Ledger.ListTasksAsync(job, default)).Single(t => t.Name == name);

    [Fact]
    public async Task Claims_are_exclusive_under_concurrency()
    {
        const int count = 60;
        long job = await PlannedJobAsync(Enumerable.Range(0, count).Select(i => Spec($"t{i}")).ToArray());
        var claimed = new ConcurrentBag<(long Task, string Silo)>();

        async Task Claimer(string silo)
        {
            while ((await Ledger.CountTasksAsync(job, default)).Done < count)
            {
                var lease = await Ledger.ClaimTaskAsync(silo, Long, default);
                if (lease is null)
                {
                    await Task.Delay(5);
                    continue;
                }
                claimed.Add((lease.TaskId, silo));
                Assert.True(await Ledger.CompleteTaskAsync(lease, default));
            }
        }

        await Task.WhenAll(Enumerable.Range(0, 8).Select(i => Task.Run(() => Claimer($"silo{i}"))));
        Assert.Equal(count, claimed.Count);
        Assert.Equal(count, claimed.Select(c => c.Task).Distinct().Count());
        Assert.All(await Ledger.ListTasksAsync(job, default), t => Assert.Equal((TaskState.Done, 1), (t.State, t.Attempts)));
    }

    [Fact]
    public async Task Dependencies_gate_claims()
    {
        long job = await PlannedJobAsync(Spec("c", "a", "b"), Spec("a"), Spec("b"));
        var first = await Ledger.ClaimTaskAsync("s1", Long, default);
        var second = await Ledger.ClaimTaskAsync("s1", Long, default);
        Assert.Equal(["a", "b"], new[] { first!.Name, second!.Name }.Order());
        Assert.Null(await Ledger.ClaimTaskAsync("s1", Long, default));

        Assert.True(await Ledger.CompleteTaskAsync(first, default));
        Assert.Null(await Ledger.ClaimTaskAsync("s1", Long, default));
        Assert.True(await Ledger.CompleteTaskAsync(second, default));
        var last = await Ledger.ClaimTaskAsync("s1", Long, default);
        Assert.Equal("c", last!.Name);
        Assert.Equal(job, last.JobId);
        Assert.Equal("payload of c", last.Payload);
        Assert.Equal(100, last.Bytes);
        Assert.Equal("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", last.TraceParent);
    }

    [Fact]
    public async Task Plans_with_unknown_dependencies_or_cycles_are_refused()
    {
        long id = await Ledger.SubmitJobAsync(new JobSubmission("recipe", "/r", "", null), default);
        await Ledger.TryAcquireCoordinatorAsync("coord", Long, default);
        var unknown = await Assert.ThrowsAsync<ArgumentException>(() => Ledger.AddTasksAsync(id, "coord", [Spec("a", "missing")], default));
        Assert.Contains("missing", unknown.Message);
        var cycle = await Assert.ThrowsAsync<ArgumentException>(() => Ledger.AddTasksAsync(id, "coord", [Spec("a", "b"), Spec("b", "a"), Spec("c")], default));
        Assert.Contains("cycle", cycle.Message);
        Assert.Equal(JobState.Queued, (await Ledger.GetJobAsync(id, default))!.State);
        Assert.Empty(await Ledger.ListTasksAsync(id, default));
    }

    [Fact]
    public async Task Adding_tasks_is_idempotent_and_reserved_to_the_coordinator()
    {
        long id = await Ledger.SubmitJobAsync(new JobSubmission("recipe", "/r", "", null), default);
        await Ledger.TryAcquireCoordinatorAsync("coord", Long, default);
        await Ledger.AddTasksAsync(id, "intruder", [Spec("x")], default);
        Assert.Empty(await Ledger.ListTasksAsync(id, default));

        await Ledger.AddTasksAsync(id, "coord", [Spec("a"), Spec("b", "a")], default);
        await Ledger.AddTasksAsync(id, "coord", [Spec("a"), Spec("b", "a"), Spec("c")], default);
        Assert.Equal(["a", "b"], (await Ledger.ListTasksAsync(id, default)).Select(t => t.Name));
        Assert.Equal(JobState.Running, (await Ledger.GetJobAsync(id, default))!.State);
        Assert.Equal(new TaskCounts(2, 0, 0, 0), await Ledger.CountTasksAsync(id, default));
    }

    [Fact]
    public async Task An_expired_lease_makes_the_task_claimable_again_with_the_next_attempt()
    {
        long job = await PlannedJobAsync(Spec("a"));
        var first = await Ledger.ClaimTaskAsync("s1", Short, default);
        Assert.Equal(1, first!.Attempt);
        Assert.Null(await Ledger.ClaimTaskAsync("s2", Long, default));

        await Task.Delay(PastShort);
        var second = await Ledger.ClaimTaskAsync("s2", Long, default);
        Assert.Equal((first.TaskId, 2, "s2"), (second!.TaskId, second.Attempt, second.Silo));
        var record = await TaskAsync(job, "a");
        Assert.Equal((TaskState.Leased, 2, "s2"), (record.State, record.Attempts, record.Silo));
    }

    [Fact]
    public async Task A_lost_lease_can_be_neither_renewed_nor_completed()
    {
        long job = await PlannedJobAsync(Spec("a"), Spec("b", "a"));
        var first = (await Ledger.ClaimTaskAsync("s1", Short, default))!;
        Assert.True(await Ledger.RenewTaskAsync(first, Short, default));
        await Task.Delay(PastShort);
        var second = await Ledger.ClaimTaskAsync("s2", Long, default);

        Assert.False(await Ledger.RenewTaskAsync(first, Long, default));
        Assert.False(await Ledger.CompleteTaskAsync(first, default));
        Assert.False(await Ledger.FailTaskAsync(first, "late", permanent: true, default));
        Assert.False(await Ledger.ReleaseTaskAsync(first, default));
        Assert.Equal(JobState.Running, (await Ledger.GetJobAsync(job, default))!.State);

        Assert.True(await Ledger.CompleteTaskAsync(second!, default));
        Assert.Equal((TaskState.Done, 2), ((await TaskAsync(job, "a")).State, (await TaskAsync(job, "a")).Attempts));
        // The dependent was unblocked exactly once.
        Assert.Equal("b", (await Ledger.ClaimTaskAsync("s1", Long, default))!.Name);
    }

    [Fact]
    public async Task An_expired_lease_not_yet_taken_over_still_completes()
    {
        long job = await PlannedJobAsync(Spec("a"));
        var lease = await Ledger.ClaimTaskAsync("s1", Short, default);
        await Task.Delay(PastShort);
        Assert.True(await Ledger.CompleteTaskAsync(lease!, default));
        Assert.Equal(TaskState.Done, (await TaskAsync(job, "a")).State);
    }

    [Fact]
    public async Task Bounded_attempts_fail_the_job()
    {
        long job = await PlannedJobAsync(Spec("a"), Spec("b"));
        for (int attempt = 1; attempt <= TaskGraph.DefaultMaxAttempts; attempt++)
        {
            var lease = await ClaimNamedAsync("a");
            Assert.Equal(attempt, lease.Attempt);
            Assert.True(await Ledger.FailTaskAsync(lease, $"disk error {attempt}", permanent: false, default));
        }
        var record = await Ledger.GetJobAsync(job, default);
        Assert.Equal(JobState.Failed, record!.State);
        Assert.Equal("task a failed after 3 attempts: disk error 3", record.Error);
        Assert.Null(record.FinishedAt); // its coordinator still has to clean up
        var a = await TaskAsync(job, "a");
        Assert.Equal((TaskState.Failed, 3, "disk error 3"), (a.State, a.Attempts, a.Error));
        Assert.Null(await Ledger.ClaimTaskAsync("s1", Long, default));
    }

    /// <summary>Claims until the named task comes up, completing nothing else (other tasks stay leased).</summary>
    private async Task<TaskLease> ClaimNamedAsync(string name)
    {
        while (true)
        {
            var lease = await Ledger.ClaimTaskAsync("s1", Long, default) ?? throw new InvalidOperationException($"{name} was never claimable");
            if (lease.Name == name) return lease;
        }
    }

    [Fact]
    public async Task A_permanent_failure_fails_the_job_at_once()
    {
        long job = await PlannedJobAsync(Spec("a"), Spec("b"));
        var lease = await ClaimNamedAsync("a");
        Assert.True(await Ledger.FailTaskAsync(lease, "corrupt header", permanent: true, default));
        var record = await Ledger.GetJobAsync(job, default);
        Assert.Equal((JobState.Failed, "task a failed: corrupt header"), (record!.State, record.Error));
        Assert.Equal((TaskState.Failed, 1), ((await TaskAsync(job, "a")).State, (await TaskAsync(job, "a")).Attempts));
        Assert.Null(await Ledger.ClaimTaskAsync("s1", Long, default));
    }

    [Fact]
    public async Task The_last_attempt_losing_its_lease_fails_the_job_instead_of_hanging_it()
    {
        long job = await PlannedJobAsync(Spec("a"));
        for (int attempt = 1; attempt <= TaskGraph.DefaultMaxAttempts; attempt++)
        {
            var lease = await Ledger.ClaimTaskAsync($"s{attempt}", Short, default);
            Assert.Equal(attempt, lease!.Attempt);
            await Task.Delay(PastShort);
        }
        var waiting = Ledger.WaitForJobChangeAsync(Long, default);
        Assert.Null(await Ledger.ClaimTaskAsync("s9", Long, default));
        await Poll.UntilAsync(() => waiting.IsCompleted, "the job failing wakes its coordinator", Short * 20);
        var record = await Ledger.GetJobAsync(job, default);
        Assert.Equal(JobState.Failed, record!.State);
        Assert.Equal(TaskGraph.LeaseExpiredError("a", 3), record.Error);
        Assert.Equal(TaskState.Failed, (await TaskAsync(job, "a")).State);
    }

    [Fact]
    public async Task Release_gives_the_task_back_without_counting_an_attempt()
    {
        long job = await PlannedJobAsync(Spec("a"));
        var lease = await Ledger.ClaimTaskAsync("s1", Long, default);
        Assert.True(await Ledger.ReleaseTaskAsync(lease!, default));
        Assert.Equal((TaskState.Pending, 0), ((await TaskAsync(job, "a")).State, (await TaskAsync(job, "a")).Attempts));
        var again = await Ledger.ClaimTaskAsync("s2", Long, default);
        Assert.Equal((lease!.TaskId, 1), (again!.TaskId, again.Attempt));
    }

    [Fact]
    public async Task Cancel_stops_claims_and_revokes_running_leases()
    {
        long job = await PlannedJobAsync(Spec("a"), Spec("b"));
        var lease = await Ledger.ClaimTaskAsync("s1", Long, default);
        Assert.True(await Ledger.CancelJobAsync(job, default));
        Assert.False(await Ledger.CancelJobAsync(job, default));
        Assert.Null(await Ledger.ClaimTaskAsync("s1", Long, default));
        Assert.False(await Ledger.RenewTaskAsync(lease!, Long, default));
        var record = await Ledger.GetJobAsync(job, default);
        Assert.Equal(JobState.Cancelled, record!.State);

        // The coordinator still finds it to clean up, then records the end; the state stays cancelled.
        var coordinator = await Ledger.TryAcquireCoordinatorAsync("other", Long, default);
        Assert.Null(coordinator); // "coord" still holds it
        Assert.True(await Ledger.RenewCoordinatorAsync(job, "coord", TimeSpan.Zero, default));
        coordinator = await Ledger.TryAcquireCoordinatorAsync("other", Long, default);
        Assert.Equal((job, JobState.Cancelled), (coordinator!.Id, coordinator.State));
        await Ledger.FinishJobAsync(job, JobState.Succeeded, null, default);
        record = await Ledger.GetJobAsync(job, default);
        Assert.Equal(JobState.Cancelled, record!.State);
        Assert.NotNull(record.FinishedAt);
        Assert.Null(await Ledger.TryAcquireCoordinatorAsync("other", Long, default));
    }

    [Fact]
    public async Task The_coordinator_lease_is_exclusive_and_taken_over_after_expiry()
    {
        long id = await Ledger.SubmitJobAsync(new JobSubmission("recipe", "/r", "", null), default);
        var first = await Ledger.TryAcquireCoordinatorAsync("s1", Short, default);
        Assert.Equal(("s1", JobState.Queued), (first!.Coordinator, first.State));
        Assert.Null(await Ledger.TryAcquireCoordinatorAsync("s2", Short, default));
        Assert.True(await Ledger.RenewCoordinatorAsync(id, "s1", Short, default));
        Assert.False(await Ledger.RenewCoordinatorAsync(id, "s2", Short, default));

        await Task.Delay(PastShort);
        var second = await Ledger.TryAcquireCoordinatorAsync("s2", Long, default);
        Assert.Equal((id, "s2"), (second!.Id, second.Coordinator));
        Assert.False(await Ledger.RenewCoordinatorAsync(id, "s1", Long, default));
        Assert.True(await Ledger.RenewCoordinatorAsync(id, "s2", Long, default));

        await Ledger.FinishJobAsync(id, JobState.Succeeded, null, default);
        Assert.False(await Ledger.RenewCoordinatorAsync(id, "s2", Long, default));
        var done = await Ledger.GetJobAsync(id, default);
        Assert.Equal(JobState.Succeeded, done!.State);
        Assert.NotNull(done.FinishedAt);
    }

    [Fact]
    public async Task Membership_tracks_heartbeats_and_departures()
    {
        var now = DateTimeOffset.UtcNow;
        await Ledger.RegisterSiloAsync(new SiloRecord("s1", "host-a", 101, now, now, "/data/a.safetensors"), default);
        await Ledger.RegisterSiloAsync(new SiloRecord("s2", "host-b", 102, now, now), default);
        var live = await Ledger.LiveSilosAsync(TimeSpan.FromMinutes(1), default);
        Assert.Equal(["s1", "s2"], live.Select(s => s.Name));
        Assert.Equal(("host-a", 101, "/data/a.safetensors"), (live[0].Host, live[0].Pid, live[0].Models));

        await Task.Delay(PastShort);
        await Ledger.HeartbeatAsync("s2", default);
        Assert.Equal(["s2"], (await Ledger.LiveSilosAsync(Short, default)).Select(s => s.Name));

        await Ledger.DeregisterSiloAsync("s2", default);
        Assert.Equal(["s1"], (await Ledger.LiveSilosAsync(TimeSpan.FromMinutes(1), default)).Select(s => s.Name));
    }

    [Fact]
    public async Task A_silo_claims_the_tasks_it_is_preferred_for_first()
    {
        await PlannedJobAsync(Spec("other") with { PreferredSilo = "s2" }, Spec("anyone"), Spec("mine") with { PreferredSilo = "s1" });
        var order = new List<string>();
        while (await Ledger.ClaimTaskAsync("s1", Long, default) is { } lease) order.Add(lease.Name);
        Assert.Equal(["mine", "anyone", "other"], order);
    }

    [Fact]
    public async Task Waiting_for_work_wakes_on_submit_and_on_completion()
    {
        var waiting = Ledger.WaitForWorkAsync(TimeSpan.FromMinutes(5), default);
        long job = await PlannedJobAsync(Spec("a"));
        await Poll.UntilAsync(() => waiting.IsCompleted, "a submit wakes a waiter");

        var lease = await Ledger.ClaimTaskAsync("s1", Long, default);
        waiting = Ledger.WaitForWorkAsync(TimeSpan.FromMinutes(5), default);
        await Ledger.CompleteTaskAsync(lease!, default);
        await Poll.UntilAsync(() => waiting.IsCompleted, "a completion wakes a waiter");
        Assert.Equal(JobState.Running, (await Ledger.GetJobAsync(job, default))!.State);
    }

    [Fact]
    public async Task A_coordinator_is_woken_by_a_submit_and_by_the_last_completion_but_not_while_tasks_wait_to_be_claimed()
    {
        var waiting = Ledger.WaitForJobChangeAsync(Long, default);
        Assert.False(waiting.IsCompleted);
        long job = await PlannedJobAsync(Spec("a"), Spec("b"), Spec("c"));
        await Poll.UntilAsync(() => waiting.IsCompleted, "a submit wakes a coordinator", Short * 20);

        var a = await Ledger.ClaimTaskAsync("s1", Long, default);
        var b = await Ledger.ClaimTaskAsync("s2", Long, default);
        waiting = Ledger.WaitForJobChangeAsync(Long, default);
        Assert.True(await Ledger.CompleteTaskAsync(a!, default));
        // A notification arrives in milliseconds; this one must not come at all, or coordinators poll once per task.
        await Task.Delay(Short);
        Assert.False(waiting.IsCompleted, "a completion that leaves a task unclaimed does not wake the coordinator");

        var c = await Ledger.ClaimTaskAsync("s1", Long, default);
        Assert.True(await Ledger.CompleteTaskAsync(b!, default));
        waiting = Ledger.WaitForJobChangeAsync(Long, default);
        Assert.True(await Ledger.CompleteTaskAsync(c!, default));
        await Poll.UntilAsync(() => waiting.IsCompleted, "the job's last completion wakes the coordinator", Short * 20);
        Assert.Equal(JobState.Running, (await Ledger.GetJobAsync(job, default))!.State);
    }

    [Fact]
    public async Task A_coordinator_is_woken_when_its_job_fails_or_is_cancelled()
    {
        long failing = await PlannedJobAsync(Spec("a"), Spec("b"));
        var lease = await Ledger.ClaimTaskAsync("s1", Long, default);
        var waiting = Ledger.WaitForJobChangeAsync(Long, default);
        Assert.True(await Ledger.FailTaskAsync(lease!, "corrupt header", permanent: true, default));
        await Poll.UntilAsync(() => waiting.IsCompleted, "a task failing its job wakes the coordinator", Short * 20);
        Assert.Equal(JobState.Failed, (await Ledger.GetJobAsync(failing, default))!.State);

        long cancelled = await Ledger.SubmitJobAsync(new JobSubmission("recipe", "/recipes", "", null), default);
        waiting = Ledger.WaitForJobChangeAsync(Long, default);
        Assert.True(await Ledger.CancelJobAsync(cancelled, default));
        await Poll.UntilAsync(() => waiting.IsCompleted, "a cancel wakes the coordinator", Short * 20);
    }

    [Fact]
    public async Task Jobs_are_listed_newest_first_and_keep_their_submission()
    {
        long a = await Ledger.SubmitJobAsync(new JobSubmission("recipe a", "/ra", "opts", null), default);
        long b = await Ledger.SubmitJobAsync(new JobSubmission("recipe b", "/rb", "", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), default);
        var jobs = await Ledger.ListJobsAsync(10, default);
        Assert.Equal([b, a], jobs.Select(j => j.Id));
        Assert.Equal(("recipe a", "/ra", "opts", JobState.Queued), (jobs[1].RecipeText, jobs[1].RecipeDirectory, jobs[1].Options, jobs[1].State));
        Assert.Null(await Ledger.GetJobAsync(b + 100, default));
        Assert.Single(await Ledger.ListJobsAsync(1, default));
    }
}

public sealed class MemoryLedgerContractTests : LedgerContractTests
{
    protected override Task<ILedger> OpenAsync() => Task.FromResult<ILedger>(new MemoryLedger());
}

public sealed class PostgresLedgerContractTests : LedgerContractTests
{
    protected override async Task<ILedger> OpenAsync()
    {
        var server = await PostgresServer.Shared;
        return await PostgresLedger.OpenAsync(LedgerConnection.Parse(await server.CreateDatabaseAsync()), null, default);
    }
}
