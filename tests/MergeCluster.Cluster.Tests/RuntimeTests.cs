using System.Collections.Concurrent;
using MergeCluster.Cluster.Testing;
using MergeCluster.Cluster.Tests.Infrastructure;
using MergeCluster.Engine.Ledger;
using MergeCluster.Engine.Runtime;

namespace MergeCluster.Cluster.Tests;

/// <summary>The coordinator, worker and silo loops over the embedded mode's memory ledger, with the file-writing test engine.</summary>
public sealed class RuntimeTests : IDisposable
{
    private static readonly RuntimeOptions Fast = RuntimeOptions.ForLease(TimeSpan.FromSeconds(1), drainGrace: TimeSpan.Zero);

    // A cancel reaches a running attempt at its next renewal (a third of a lease) while cleanup waits at most a whole
    // lease for it; on a loaded 2-core CI host a 1 s lease leaves too little slack between the two.
    private static readonly RuntimeOptions Slack = RuntimeOptions.ForLease(TimeSpan.FromSeconds(4), drainGrace: TimeSpan.Zero);
    private readonly TempDirectory _root = new();
    private readonly ConcurrentQueue<string> _log = new();

    public void Dispose() => _root.Dispose();

    private DataRoots Roots => new([_root.Path]);

    /// <summary>What the test engine's output must be: its leaves' bytes in leaf order.</summary>
    public static byte[] Expected(int leaves, int leafBytes) =>
        Enumerable.Range(0, leaves).SelectMany(i => FileTestEngine.LeafBytes(i, leafBytes)).ToArray();

    private Silo NewSilo(ILedger ledger, string name, int threads = 2, RuntimeOptions? options = null) =>
        new(ledger, new FileTestEngine(Roots), new SiloRecord(name, "test", Environment.ProcessId, DateTimeOffset.UtcNow, DateTimeOffset.UtcNow),
            threads, options ?? Fast, line => _log.Enqueue($"[{name}] {line}"));

    private static async Task<JobRecord> FinishedAsync(ILedger ledger, long id)
    {
        JobRecord? job = null;
        await Poll.UntilAsync(async () => (job = await ledger.GetJobAsync(id, default))!.FinishedAt is not null, $"job {id} ends");
        return job!;
    }

    private string Log => string.Join('\n', _log);

    /// <summary>Runs one job on a fresh memory ledger with one silo, s1; <paramref name="during"/> acts while it runs.</summary>
    private async Task<(MemoryLedger Ledger, JobRecord Job)> RunJobAsync(string recipe, Func<MemoryLedger, long, Task>? during = null,
        RuntimeOptions? options = null)
    {
        var ledger = new MemoryLedger();
        using var drain = new CancellationTokenSource();
        var silo = NewSilo(ledger, "s1", options: options).RunAsync(drain.Token);
        long id = await ledger.SubmitJobAsync(new JobSubmission(recipe, _root.Path, "", null), default);
        if (during is not null) await during(ledger, id);
        var job = await FinishedAsync(ledger, id);
        drain.Cancel();
        await silo;
        return (ledger, job);
    }

    [Fact]
    public async Task An_embedded_run_writes_the_leaves_in_order_and_removes_its_scratch()
    {
        var recipe = "output = out/merged.bin\nleaves = 7\nleaf_bytes = 3000\n";
        Directory.CreateDirectory(_root.File("out"));
        var job = await EmbeddedRun.RunAsync(new FileTestEngine(Roots), recipe, _root.Path, "", threads: 3, default, _log.Enqueue, Fast);
        Assert.True(job.State == JobState.Succeeded, Log);
        Assert.Equal(Expected(7, 3000), await File.ReadAllBytesAsync(_root.File("out/merged.bin")));
        Assert.Equal(["merged.bin"], Directory.GetFileSystemEntries(_root.File("out")).Select(Path.GetFileName));
    }

    [Fact]
    public async Task Cancelling_an_embedded_run_cancels_its_job_and_cleans_up()
    {
        using var cts = new CancellationTokenSource();
        var run = EmbeddedRun.RunAsync(new FileTestEngine(Roots), "output = out.bin\nleaves = 2\ngate = leaf0:never.flag\n", _root.Path, "", 2, cts.Token, _log.Enqueue, Fast);
        await Poll.UntilAsync(() => Directory.Exists(_root.File(".mergecluster-job1")), "the job starts");
        cts.Cancel();
        var job = await run;
        Assert.Equal((JobState.Cancelled, "cancelled"), (job.State, job.Error));
        Assert.False(Directory.Exists(_root.File(".mergecluster-job1")), Log);
    }

    [Fact]
    public async Task A_coordinator_takes_over_a_dead_coordinators_job_without_planning_it_again()
    {
        await using var ledger = new MemoryLedger();
        var recipe = "output = out.bin\nleaves = 5\nleaf_bytes = 100\n";
        long id = await ledger.SubmitJobAsync(new JobSubmission(recipe, _root.Path, "", null), default);
        // A coordinator plans the job, then its silo dies: nothing renews its lease.
        var dead = await ledger.TryAcquireCoordinatorAsync("dead", Fast.CoordinatorLease, default);
        var plan = await new FileTestEngine(Roots).PlanAsync(dead!, [], default);
        await ledger.AddTasksAsync(id, "dead", plan.Tasks, default, plan.Options);
        var planned = await ledger.ListTasksAsync(id, default);

        using var drain = new CancellationTokenSource();
        var silo = NewSilo(ledger, "heir").RunAsync(drain.Token);
        var job = await FinishedAsync(ledger, id);
        drain.Cancel();
        await silo;

        Assert.True(job.State == JobState.Succeeded, Log);
        Assert.Equal(planned.Select(t => (t.TaskId, t.Name)), (await ledger.ListTasksAsync(id, default)).Select(t => (t.TaskId, t.Name)));
        Assert.Contains("[heir] coordinating job 1 (Running)", Log);
        Assert.DoesNotContain("planned job", Log);
        Assert.Equal(Expected(5, 100), await File.ReadAllBytesAsync(_root.File("out.bin")));
    }

    [Fact]
    public async Task Cancelling_a_job_stops_its_running_task_and_cleans_up()
    {
        var (ledger, job) = await RunJobAsync("output = out.bin\nleaves = 3\ngate = leaf1:never.flag\n", async (ledger, id) =>
        {
            await Poll.UntilAsync(async () => (await ledger.ListTasksAsync(id, default)).Any(t => t is { Name: "leaf1", State: TaskState.Leased }), "leaf1 runs");
            Assert.True(Directory.Exists(_root.File($".mergecluster-job{id}")));
            Assert.True(await ledger.CancelJobAsync(id, default));
        }, Slack);
        long id = job.Id;

        // The worker noticed at its next renewal and gave the task back before the coordinator cleaned up.
        Assert.Contains("abandoned job 1 task leaf1 (attempt 1)", Log);
        Assert.Equal(TaskState.Pending, (await ledger.ListTasksAsync(id, default)).Single(t => t.Name == "leaf1").State);
        // The worker logs "abandoned" before it releases, and the coordinator cleans up only once no task is leased, so
        // that line comes first; "released" is logged after the release commits and may follow the coordinator's line,
        // which a cancel now wakes at once.
        Assert.Contains("released job 1 task leaf1", Log);
        Assert.True(Log.IndexOf("abandoned job 1 task leaf1", StringComparison.Ordinal) < Log.IndexOf("job 1 cancelled", StringComparison.Ordinal), Log);
        Assert.Equal(JobState.Cancelled, job.State);
        Assert.False(Directory.Exists(_root.File($".mergecluster-job{id}")), Log);
        Assert.False(File.Exists(_root.File("out.bin")));
    }

    [Fact]
    public async Task A_deterministically_failing_task_fails_the_job_after_bounded_attempts()
    {
        var (ledger, job) = await RunJobAsync("output = out.bin\nleaves = 4\nfail = leaf2\n");
        long id = job.Id;

        Assert.Equal(JobState.Failed, job.State);
        Assert.Equal("task leaf2 failed after 3 attempts: leaf2: read error (injected by the test recipe)", job.Error);
        Assert.Equal(3, (await ledger.ListTasksAsync(id, default)).Single(t => t.Name == "leaf2").Attempts);
        Assert.Equal(3, Log.Split('\n').Count(l => l.Contains("failed job 1 task leaf2")));
        Assert.False(Directory.Exists(_root.File($".mergecluster-job{id}")));
    }

    [Fact]
    public async Task A_recipe_writing_outside_the_data_roots_is_refused_at_planning()
    {
        var (ledger, job) = await RunJobAsync("output = ../escaped.bin\nleaves = 2\n");
        long id = job.Id;

        Assert.Equal(JobState.Failed, job.State);
        Assert.StartsWith("plan: ../escaped.bin: outside the data roots", job.Error);
        Assert.Empty(await ledger.ListTasksAsync(id, default));
        Assert.False(File.Exists(Path.Join(Path.GetDirectoryName(_root.Path), "escaped.bin")));
    }

    [Fact]
    public async Task A_draining_silo_releases_its_task_and_another_silo_finishes_the_job()
    {
        await using var ledger = new MemoryLedger();
        var recipe = "output = out.bin\nleaves = 3\nstall = leaf0@leaving\n";
        using var drainLeaving = new CancellationTokenSource();
        var leaving = NewSilo(ledger, "leaving", threads: 1).RunAsync(drainLeaving.Token);
        long id = await ledger.SubmitJobAsync(new JobSubmission(recipe, _root.Path, "", null), default);
        await Poll.UntilAsync(async () => (await ledger.ListTasksAsync(id, default)).Any(t => t is { Name: "leaf0", State: TaskState.Leased, Silo: "leaving" }), "leaf0 stalls on 'leaving'");

        drainLeaving.Cancel();
        await leaving;
        Assert.Contains("released job 1 task leaf0 (attempt 1)", Log);
        Assert.Empty(await ledger.LiveSilosAsync(TimeSpan.FromMinutes(1), default));

        using var drainStaying = new CancellationTokenSource();
        var staying = NewSilo(ledger, "staying").RunAsync(drainStaying.Token);
        var job = await FinishedAsync(ledger, id);
        drainStaying.Cancel();
        await staying;
        Assert.True(job.State == JobState.Succeeded, Log);
        var leaf0 = (await ledger.ListTasksAsync(id, default)).Single(t => t.Name == "leaf0");
        Assert.Equal((1, "staying"), (leaf0.Attempts, leaf0.Silo));
        Assert.Equal(Expected(3, 4096), await File.ReadAllBytesAsync(_root.File("out.bin")));
    }
}
