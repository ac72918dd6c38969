using System.Collections.Concurrent;
using System.Collections.Immutable;
using System.Diagnostics;
using MergeCluster.Cluster.Contracts;
using MergeCluster.Cluster.Silo;
using MergeCluster.Cluster.Telemetry;
using MergeCluster.Cluster.Tests.Infrastructure;
using MergeCluster.Engine.Execution;
using MergeCluster.Engine.Telemetry;
using MergeCluster.Safetensors;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Orleans.TestingHost;
using Xunit.Abstractions;

namespace MergeCluster.Cluster.Tests;

/// <summary>
/// The job and shard grains in Orleans' in-process test cluster (two silos, grain state and reminders on real
/// Azurite): placement near models, one trace per job, bounded retries of a corrupt input, cancellation. Tasks are
/// held back deterministically by taking the silos' task slots, never by sleeping.
/// </summary>
[Collection(ProcessTests.Name)]
public sealed class JobGrainTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly TempDirectory _root = new("mergecluster-grains");
    private InProcessTestCluster? _cluster;
    private string _recipe = "";

    public async Task InitializeAsync() => _recipe = await MergeInputs.WriteAsync(_root);

    public async Task DisposeAsync()
    {
        if (_cluster is not null) await _cluster.DisposeAsync();
        _root.Dispose();
    }

    /// <summary>Two silos; silo i announces <paramref name="models"/>[i] as the models it holds (both can read every file).</summary>
    private async Task<InProcessTestCluster> StartAsync(params string[][] models)
    {
        var storage = StorageConnection.Parse((await Azurite.Shared).ConnectionString);
        var roots = new DataRoots([_root.Path]);
        var builder = new InProcessTestClusterBuilder((short)models.Length);
        builder.ConfigureSilo((options, silo) =>
        {
            // Silos are configured concurrently, so the index comes from the test cluster's own name for the silo
            // ("Silo_<i>"), not from the order the callbacks run in: a shared counter gave both silos index 0.
            int index = SiloIndex(options.SiloName);
            var identity = new SiloIdentity($"silo{index}", Threads: 1, roots, models[index].ToImmutableSortedSet(StringComparer.Ordinal));
            SiloHost.AddMergeCluster(silo, storage, identity);
        });
        builder.ConfigureSiloHost((options, host) => host.Logging.AddProvider(new TestLoggerProvider(output, options.SiloName)));
        builder.ConfigureClient(client => client.AddActivityPropagation());
        var cluster = builder.Build();
        await cluster.DeployAsync();
        // Every silo's metadata (its models and slots) is known to every other before a job is planned.
        await Poll.UntilAsync(async () => (await cluster.Client.GetGrain<IClusterGrain>(0).Silos()).Length == models.Length, "both silos are announced");
        return _cluster = cluster;
    }

    private static int SiloIndex(string siloName)
    {
        int separator = siloName.LastIndexOf('_');
        return separator >= 0 && int.TryParse(siloName.AsSpan(separator + 1), out int index)
            ? index
            : throw new InvalidOperationException($"the test cluster named a silo '{siloName}', not 'Silo_<index>'");
    }

    private async Task<long> SubmitAsync(InProcessTestCluster cluster, string shape, string? traceParent = null)
    {
        var options = new MergeJobOptions { Shape = Enum.Parse<TaskShape>(shape, true), ShardBytes = 1 << 20, HashInputs = true };
        var submission = new JobSubmission(await File.ReadAllTextAsync(_recipe), _root.Path, _recipe, options.ToSettings(), traceParent);
        return await cluster.Client.GetGrain<IJobRegistryGrain>(0).Submit(submission);
    }

    private static async Task<JobStatus> WaitAsync(InProcessTestCluster cluster, long id, Func<JobStatus, bool> condition, string what)
    {
        JobStatus? status = null;
        await Poll.UntilAsync(async () => condition(status = await cluster.Client.GetGrain<IJobGrain>(id).GetStatus()), $"job {id} {what}", TimeSpan.FromMinutes(3));
        return status!;
    }

    private static async Task<JobStatus> WaitAsync(InProcessTestCluster cluster, long id, Func<JobStatus, bool> condition, string what, ITestOutputHelper log)
    {
        JobStatus? status = null;
        try { await Poll.UntilAsync(async () => condition(status = await cluster.Client.GetGrain<IJobGrain>(id).GetStatus()), $"job {id} {what}", TimeSpan.FromMinutes(3)); }
        catch (TimeoutException) { log.WriteLine($"last status: {status}"); throw; }
        return status!;
    }

    private Task<JobStatus> EndAsync(InProcessTestCluster cluster, long id) =>
        WaitAsync(cluster, id, s => s.State == JobPhase.Succeeded || (s.State is JobPhase.Failed or JobPhase.Cancelled && !s.CleaningUp), "ends", output);

    /// <summary>Takes every task slot of every silo: dispatched tasks wait until the slots are disposed.</summary>
    private static async Task<IDisposable> HoldSlotsAsync(InProcessTestCluster cluster)
    {
        var held = new List<IDisposable>();
        foreach (var silo in cluster.Silos) held.Add(await silo.ServiceProvider.GetRequiredService<TaskSlots>().AcquireAsync(default));
        return new Held(held);
    }

    /// <summary>Replaces a model with its first bytes only, as a broken copy would leave it.</summary>
    private static async Task CutShortAsync(string model)
    {
        var bytes = await File.ReadAllBytesAsync(model);
        await File.WriteAllBytesAsync(model + ".new", bytes[..^4096]);
        File.Move(model + ".new", model, overwrite: true);
    }

    private sealed class Held(List<IDisposable> slots) : IDisposable
    {
        public void Dispose() { foreach (var s in slots) s.Dispose(); }
    }

    [Fact]
    public async Task Leaves_run_on_the_silo_holding_their_models_and_the_job_is_one_trace_across_silos()
    {
        var spans = new ConcurrentBag<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == MergeTelemetry.Name || ClusterTelemetry.OrleansSources.Contains(s.Name),
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = spans.Add,
        };
        ActivitySource.AddActivityListener(listener);
        // Reduction groups of two in `models:` order: [base, m1] [m2, m3] [m4]; silo0 announces m1 and m2, silo1 m3 and m4.
        var cluster = await StartAsync(["m1.safetensors", "m2.safetensors"], ["m3.safetensors", "m4.safetensors"]);

        long id;
        ActivityTraceId trace;
        using (var root = MergeTelemetry.StartJob(_recipe, out var traceParent))
        {
            trace = root!.TraceId;
            id = await SubmitAsync(cluster, "auto", traceParent);
        }
        var end = await EndAsync(cluster, id);
        Assert.True(end.State == JobPhase.Succeeded, end.Error);
        Assert.Equal("Tree", end.Shape); // no silo holds every model
        Assert.Equal(await MergeInputs.LocalMergeAsync(_root, _recipe), await File.ReadAllBytesAsync(_root.File("out/cluster.safetensors")));

        var tasks = spans.Where(s => s.OperationName == MergeTelemetry.TaskSpan && Equals(s.GetTagItem(MergeTelemetry.JobTag), id)).ToList();
        Assert.Equal(end.Tasks.Done, tasks.Count);
        Assert.All(tasks, t => Assert.Equal(trace, t.TraceId));
        Assert.All(tasks, t => Assert.Equal("done", t.GetTagItem(MergeTelemetry.StateTag)));
        foreach (var leaf in tasks.Where(t => (string?)t.GetTagItem(MergeTelemetry.KindTag) == TaskKinds.Leaf))
        {
            // A leaf runs on the silo holding most of its group's models (either, on a tie).
            var models = ((string)leaf.GetTagItem(MergeTelemetry.ModelsTag)!).Split(',');
            int held0 = models.Count(m => m is "m1" or "m2"), held1 = models.Count(m => m is "m3" or "m4");
            var silo = (string)leaf.GetTagItem(MergeTelemetry.SiloTag)!;
            if (held0 != held1) Assert.True(silo == (held0 > held1 ? "silo0" : "silo1"), $"{string.Join(",", models)} ran on {silo}");
            Assert.NotNull(leaf.GetTagItem(MergeTelemetry.ShardTag));
            Assert.True((long)leaf.GetTagItem(MergeTelemetry.BytesReadTag)! > 0);
        }
        Assert.Equal(["silo0", "silo1"], tasks.Select(t => (string)t.GetTagItem(MergeTelemetry.SiloTag)!).Distinct().Order());

        // Each task span hangs from the job's root through the grain calls that carried it: submit -> job grain -> shard grain.
        var byId = spans.Where(s => s.TraceId == trace).ToDictionary(s => s.SpanId);
        foreach (var task in tasks)
        {
            var chain = new List<string>();
            for (var s = task; s is not null; s = byId.GetValueOrDefault(s.ParentSpanId)) chain.Add(s.OperationName);
            Assert.Contains(chain, n => n.Contains("IShardGrain/Run"));
            Assert.Contains(MergeTelemetry.ScheduleSpan, chain);
        }
        Assert.Contains(spans, s => s.TraceId == trace && s.OperationName == MergeTelemetry.PlanSpan);
        Assert.Contains(spans, s => s.TraceId == trace && s.OperationName == MergeTelemetry.AssembleSpan);
        Assert.Contains(spans, s => s.TraceId == trace && s.OperationName.Contains("IJobRegistryGrain/Submit"));
    }

    /// <summary>
    /// The methods that need every term of a tensor at once (TIES, DARE with its seeded mask, Weiszfeld, model stock)
    /// run in the cluster's final tasks: the file equals the embedded merge's, in the tree shape and the fused one.
    /// </summary>
    [Theory]
    [InlineData("tree")]
    [InlineData("fused")]
    public async Task Merge_methods_beyond_the_mean_give_the_local_file_bit_for_bit(string shape)
    {
        await File.WriteAllTextAsync(_recipe, MergeInputs.Models + """
            components:
              unet: { method: ties, models: [m1, m2, m3, m4], k: 0.3 }
              te0: { method: geometric_median, models: [m1, m2, m3, base] }
              te1: { method: dare, models: [m1, m2, m4], probability: 0.4, seed: 7 }
              vae: { method: model_stock, models: [m1, m2, m4] }
            output: { path: out/cluster.safetensors, dtype: f16 }
            reduce: { group: 2 }

            """);
        var cluster = await StartAsync(["m1.safetensors", "m2.safetensors"], ["m3.safetensors", "m4.safetensors"]);
        var end = await EndAsync(cluster, await SubmitAsync(cluster, shape));
        Assert.True(end.State == JobPhase.Succeeded, end.Error);
        Assert.Equal(shape, end.Shape, ignoreCase: true);
        Assert.Equal(await MergeInputs.LocalMergeAsync(_root, _recipe), await File.ReadAllBytesAsync(_root.File("out/cluster.safetensors")));
    }

    [Fact]
    public async Task A_corrupt_input_fails_the_job_after_three_attempts_with_the_error_in_status()
    {
        var cluster = await StartAsync([], []);
        long id;
        using (await HoldSlotsAsync(cluster))
        {
            id = await SubmitAsync(cluster, "fused");
            await WaitAsync(cluster, id, s => s.Tasks.Running > 0, "hands out its tasks");
            // Planned: now one input is cut short, as a broken copy would be. Each attempt sees it on opening the job.
            await CutShortAsync(_root.File("models/m3.safetensors"));
        }
        var end = await EndAsync(cluster, id);

        Assert.Equal(JobPhase.Failed, end.State);
        Assert.Matches(@"^task s\d+/fused failed after 3 attempts: .*m3\.safetensors: ", end.Error);
        var failed = end.Notable.Single(t => t.State == "failed");
        Assert.Equal(3, failed.Attempts);
        Assert.Contains("m3.safetensors", failed.Error);
        // Its temporary output went with it; the output was never written.
        Assert.Equal(["m0.safetensors", "m1.safetensors", "m2.safetensors", "m3.safetensors", "m4.safetensors"],
            Directory.GetFileSystemEntries(_root.File("models")).Select(Path.GetFileName).Order());
        Assert.Empty(Directory.GetFileSystemEntries(_root.File("out")));
    }

    [Fact]
    public async Task Each_silo_is_handed_one_task_beyond_its_slots_which_waits_there_for_a_slot()
    {
        var cluster = await StartAsync([], []);
        long id;
        using (await HoldSlotsAsync(cluster))
        {
            id = await SubmitAsync(cluster, "fused");
            // Two silos of one slot each: a task for each slot and one queued behind it, no more, while none can run.
            // A task counts as running from its dispatch; its silo is recorded once the shard grain answers, so wait for both.
            var handedOut = await WaitAsync(cluster, id, s => s.Tasks.Running >= 4 && s.Notable.Count(t => t.State == "running" && t.Silo is not null) >= 4,
                "hands out a task beyond each silo's slot");
            Assert.Equal((4, 0), (handedOut.Tasks.Running, handedOut.Tasks.Done));
            Assert.True(handedOut.Tasks.Pending > 0, $"{handedOut.Tasks.Total} tasks");
            var silos = handedOut.Notable.Where(t => t.State == "running").Select(t => t.Silo).Order().ToList();
            Assert.Equal(["silo0", "silo0", "silo1", "silo1"], silos);
        }
        var end = await EndAsync(cluster, id);
        Assert.True(end.State == JobPhase.Succeeded, end.Error);
        Assert.Equal(await MergeInputs.LocalMergeAsync(_root, _recipe), await File.ReadAllBytesAsync(_root.File("out/cluster.safetensors")));
    }

    [Fact]
    public async Task Cancelling_a_job_stops_it_and_removes_its_files()
    {
        var cluster = await StartAsync([], []);
        using (await HoldSlotsAsync(cluster))
        {
            long id = await SubmitAsync(cluster, "tree");
            var running = await WaitAsync(cluster, id, s => s.Tasks.Running > 0, "hands out its tasks");
            Assert.NotEmpty(Directory.GetFileSystemEntries(_root.File("out"))); // the preallocated output and the scratch
            Assert.True(await cluster.Client.GetGrain<IJobGrain>(id).Cancel());
            Assert.False(await cluster.Client.GetGrain<IJobGrain>(id).Cancel());
            var end = await EndAsync(cluster, id);
            Assert.Equal((JobPhase.Cancelled, "cancelled"), (end.State, end.Error));
            Assert.Equal(0, end.Tasks.Done);
            Assert.Empty(Directory.GetFileSystemEntries(_root.File("out")));
            output.WriteLine($"{running.Tasks.Total} tasks planned, cancelled with {running.Tasks.Running} handed out");
        }
    }

    [Fact]
    public async Task A_failing_sweep_removes_every_candidate_and_commits_none()
    {
        var cluster = await StartAsync([], []);
        string dir = _root.File("out/sweep");
        long id;
        using (await HoldSlotsAsync(cluster))
        {
            var options = new MergeJobOptions { Shape = TaskShape.Fused, ShardBytes = 1 << 20, HashInputs = true };
            var selection = new SelectionSettings(JobKinds.Sweep, dir, Mode: "leave-one-out", Component: "unet");
            var submission = new JobSubmission(await File.ReadAllTextAsync(_recipe), _root.Path, _recipe, options.ToSettings(), null, selection);
            id = await cluster.Client.GetGrain<IJobRegistryGrain>(0).Submit(submission);
            var running = await WaitAsync(cluster, id, s => s.Tasks.Running > 0, "hands out its tasks");
            Assert.Equal("sweep", running.Kind);
            // Every candidate's temporary output is preallocated before a task runs, under a name of the job's.
            var temps = Directory.GetFileSystemEntries(dir).Select(Path.GetFileName).ToList();
            Assert.Equal(5, temps.Count);
            Assert.All(temps, t => Assert.Matches($@"^\.recipe-minus-\w+\.safetensors\.mc-job{id}-[0-9a-f]{{16}}\.tmp$", t));
            // Then an input is cut short: every attempt of every task sees it on opening the job.
            await CutShortAsync(_root.File("models/m3.safetensors"));
        }
        var end = await EndAsync(cluster, id);
        Assert.Equal(JobPhase.Failed, end.State);
        Assert.Matches(@"^task s\d+/sweep failed after 3 attempts: .*m3\.safetensors: ", end.Error);
        // No candidate, whole or partial, and no temporary file.
        Assert.Empty(Directory.GetFileSystemEntries(dir));
    }
}
