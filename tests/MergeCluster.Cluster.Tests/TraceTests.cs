using System.Collections.Concurrent;
using System.Diagnostics;
using MergeCluster.Cluster.Ledger;
using MergeCluster.Cluster.Testing;
using MergeCluster.Cluster.Tests.Infrastructure;
using MergeCluster.Engine.Ledger;
using MergeCluster.Engine.Runtime;
using MergeCluster.Engine.Telemetry;
using Xunit.Abstractions;

namespace MergeCluster.Cluster.Tests;

/// <summary>
/// In-process silos over PostgreSQL, each with its own ledger connection as separate processes would have: a job is
/// one trace across them, and the ledger's round trips per task stay bounded.
/// </summary>
public sealed class TraceTests(ITestOutputHelper output) : IDisposable
{
    private readonly TempDirectory _root = new();

    public void Dispose() => _root.Dispose();

    private async Task<(PostgresLedger Client, Func<string, Task<PostgresLedger>> Open)> LedgerAsync()
    {
        var connection = LedgerConnection.Parse(await (await PostgresServer.Shared).CreateDatabaseAsync());
        var client = await PostgresLedger.OpenAsync(connection, null, default);
        return (client, _ => PostgresLedger.OpenAsync(connection, null, default));
    }

    private Silo NewSilo(ILedger ledger, string name, RuntimeOptions options) =>
        new(ledger, new FileTestEngine(new DataRoots([_root.Path])), new SiloRecord(name, "test", Environment.ProcessId, DateTimeOffset.UtcNow, DateTimeOffset.UtcNow),
            threads: 1, options, line => output.WriteLine($"[{name}] {line}"));

    [Fact]
    public async Task A_job_run_by_several_silos_is_one_trace_whose_task_spans_name_their_silo()
    {
        var spans = new ConcurrentBag<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = source => source.Name == MergeTelemetry.Name,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = spans.Add,
        };
        ActivitySource.AddActivityListener(listener);

        var (client, open) = await LedgerAsync();
        await using var _ = client;
        var options = RuntimeOptions.ForLease(TimeSpan.FromSeconds(5));
        var ledgers = new List<PostgresLedger>();
        using var drain = new CancellationTokenSource();
        var silos = new List<Task>();
        foreach (var name in new[] { "s1", "s2", "s3" })
        {
            var ledger = await open(name);
            ledgers.Add(ledger);
            silos.Add(NewSilo(ledger, name, options).RunAsync(drain.Token));
        }

        // The barrier holds each leaf until all three have started: with one worker per silo, they run on three silos.
        var recipe = "output = out.bin\nleaves = 3\nbarrier = leaf0,leaf1,leaf2\n";
        long id;
        ActivityTraceId traceId;
        ActivitySpanId rootSpan;
        using (var root = MergeTelemetry.StartJob("trace-test", out var traceParent))
        {
            Assert.NotNull(root);
            (traceId, rootSpan) = (root.TraceId, root.SpanId);
            id = await client.SubmitJobAsync(new JobSubmission(recipe, _root.Path, "", traceParent), default);
        }
        await Poll.UntilAsync(async () => (await client.GetJobAsync(id, default))!.FinishedAt is not null, "the job ends");
        drain.Cancel();
        await Task.WhenAll(silos);
        foreach (var ledger in ledgers) await ledger.DisposeAsync();

        Assert.Equal(JobState.Succeeded, (await client.GetJobAsync(id, default))!.State);
        var tasks = spans.Where(s => s.OperationName == MergeTelemetry.TaskSpan && s.TraceId == traceId).ToList();
        Assert.Equal(5, tasks.Count); // 3 leaves and 2 reduces, each run once
        Assert.All(tasks, t =>
        {
            Assert.Equal(rootSpan, t.ParentSpanId);
            Assert.Equal(id, t.GetTagItem(MergeTelemetry.JobTag));
            Assert.Equal(1, t.GetTagItem(MergeTelemetry.AttemptTag));
            Assert.Equal("done", t.GetTagItem(MergeTelemetry.StateTag));
        });
        var leafSilos = tasks.Where(t => (string)t.GetTagItem(MergeTelemetry.TaskTag)! is "leaf0" or "leaf1" or "leaf2")
            .Select(t => (string)t.GetTagItem(MergeTelemetry.SiloTag)!).ToHashSet();
        Assert.Equal(["s1", "s2", "s3"], leafSilos.Order());
        Assert.Contains(spans, s => s.OperationName == MergeTelemetry.PlanSpan && s.TraceId == traceId);
        Assert.Contains(spans, s => s.OperationName == MergeTelemetry.AssembleSpan && s.TraceId == traceId);
    }

    [Fact]
    public async Task A_task_costs_a_bounded_number_of_ledger_round_trips()
    {
        const int leaves = 32; // 63 tasks in the tree
        var clock = Stopwatch.StartNew();
        var (client, open) = await LedgerAsync();
        output.WriteLine($"ledger ready after {clock.Elapsed.TotalSeconds:0.00} s");
        await using var _ = client;
        await using var coordinatorLedger = await open("coordinator");
        await using var workerLedger = await open("worker");
        var options = RuntimeOptions.ForLease(TimeSpan.FromSeconds(30));
        var engine = new FileTestEngine(new DataRoots([_root.Path]));
        using var drain = new CancellationTokenSource();
        // The coordinator role and the worker on separate ledgers, so each one's round trips are counted apart.
        var coordinator = new Coordinator(coordinatorLedger, engine, "s1", options, output.WriteLine).RunAsync(drain.Token, default);
        var worker = new Worker(workerLedger, engine, "s1", options, _ => { }).RunAsync(drain.Token, default);

        long id = await client.SubmitJobAsync(new JobSubmission($"output = out.bin\nleaves = {leaves}\nleaf_bytes = 1024\n", _root.Path, "", null), default);
        await Poll.UntilAsync(async () => (await client.GetJobAsync(id, default))!.FinishedAt is not null, "the job ends");
        long workerTrips = workerLedger.RoundTrips;
        output.WriteLine($"job done after {clock.Elapsed.TotalSeconds:0.00} s");
        drain.Cancel();
        await Task.WhenAll(coordinator, worker);

        int tasks = (await client.ListTasksAsync(id, default)).Count;
        Assert.Equal(2 * leaves - 1, tasks);
        Assert.Equal(JobState.Succeeded, (await client.GetJobAsync(id, default))!.State);
        // A claim and a completion per task, plus the job row once and a few claims that found nothing.
        double perTask = (double)workerTrips / tasks;
        output.WriteLine($"worker: {workerTrips} round trips for {tasks} tasks = {perTask:0.00} per task; coordinator: {coordinatorLedger.RoundTrips}");
        Assert.InRange(perTask, 2, 3);

        // Claim latency, for the record (not asserted): one round trip with the sweep, on a ledger of ready tasks.
        long job2 = await client.SubmitJobAsync(new JobSubmission("x", _root.Path, "", null), default);
        await client.TryAcquireCoordinatorAsync("bench", TimeSpan.FromMinutes(1), default);
        await client.AddTasksAsync(job2, "bench", Enumerable.Range(0, 500).Select(i => new TaskSpec($"t{i}", "k", "", [], 1)).ToList(), default);
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < 200; i++) await client.ClaimTaskAsync("bench", TimeSpan.FromMinutes(1), default);
        output.WriteLine($"claim latency: {watch.Elapsed.TotalMilliseconds / 200:0.00} ms per claim (500 ready tasks, serial)");
    }
}
