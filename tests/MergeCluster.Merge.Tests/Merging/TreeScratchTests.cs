using System.Diagnostics;
using MergeCluster.Engine.Execution;
using MergeCluster.Engine.Telemetry;
using MergeCluster.Merge.Recipes;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Merging;

[Collection(SpanListeningTests.Name)]
public class TreeScratchTests
{
    /// <summary>
    /// A tree-shaped merge deletes a partial sum as soon as the task that consumed it is done in the ledger, so scratch
    /// holds the shards in flight, not the whole job (which for 50 SDXL models would be hundreds of GB of float64).
    /// Counted whenever a task span ends: 24 shards × 5 partials would reach 120 files if nothing were deleted.
    /// </summary>
    [Fact]
    public async Task Partial_sums_are_deleted_once_their_consumer_is_done()
    {
        using var dir = new TempDirectory();
        var tensors = Enumerable.Range(0, 24)
            .Select(i => new Checkpoints.Tensor($"model.diffusion_model.input_blocks.{i}.0.weight", DType.F16, [256, 1024])).ToList();
        for (int i = 0; i < 3; i++) Checkpoints.Write(dir.File($"m{i}.safetensors"), i + 1, DType.F16, tensors: tensors);
        File.WriteAllText(dir.File("recipe.yaml"), "models:\n  m0: m0.safetensors\n  m1: m1.safetensors\n  m2: m2.safetensors\ncomponents:\n  all: { method: mean, models: [m0, m1, m2] }\noutput: out.safetensors\nreduce: { group: 1 }\n");

        int most = 0, finals = 0;
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == MergeTelemetry.Name,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = span =>
            {
                if (span.OperationName != MergeTelemetry.TaskSpan) return;
                int partials = Directory.EnumerateFiles(dir.Path, "*.partial", SearchOption.AllDirectories).Count();
                lock (dir) most = Math.Max(most, partials);
                if ((string?)span.GetTagItem(MergeTelemetry.KindTag) == "final") Interlocked.Increment(ref finals);
            },
        };
        ActivitySource.AddActivityListener(listener);

        await LocalMerge.RunAsync(Recipe.Load(dir.File("recipe.yaml")), new LocalMergeOptions { Threads = 2, HashInputs = false, Shape = TaskShape.Tree, ShardBytes = 1 << 20 }, null, CancellationToken.None);

        Assert.Equal(24, finals);
        Assert.InRange(most, 1, 25);
        Assert.Empty(Directory.EnumerateFiles(dir.Path, "*.partial", SearchOption.AllDirectories));
    }
}

public class TaskShapeTests
{
    /// <summary>Auto is fused when some silo holds every model (shared storage) and a tree when the models are spread.</summary>
    [Fact]
    public async Task Auto_shape_builds_a_tree_only_when_no_silo_holds_every_model()
    {
        using var dir = new TempDirectory();
        for (int i = 0; i < 2; i++) Checkpoints.Write(dir.File($"m{i}.safetensors"), i + 1, DType.F16);
        File.WriteAllText(dir.File("recipe.yaml"), "models:\n  m0: m0.safetensors\n  m1: m1.safetensors\ncomponents:\n  all: { method: mean, models: [m0, m1] }\noutput: out.safetensors\nreduce: { group: 1 }\n");
        var plan = Planning.Planner.Create(Recipe.Load(dir.File("recipe.yaml")));
        Engine.Ledger.SiloRecord Silo(string name, params string[] models) =>
            new(name, "host", 1, DateTimeOffset.UtcNow, DateTimeOffset.UtcNow, models.Length == 0 ? null : string.Join('\n', models.Select(m => $"/data/{m}")));

        Assert.Equal(TaskShape.Fused, MergeJobEngine.ShapeFor(plan, [Silo("a", "m0.safetensors", "m1.safetensors", "other.safetensors"), Silo("b", "m0.safetensors")]));
        Assert.Equal(TaskShape.Tree, MergeJobEngine.ShapeFor(plan, [Silo("a", "m0.safetensors"), Silo("b", "m1.safetensors")]));
        Assert.Equal(TaskShape.Fused, MergeJobEngine.ShapeFor(plan, [Silo("a"), Silo("b")]));
        Assert.Contains(MergeJobEngine.Tasks(plan, TaskShape.Tree, []), t => t.Kind == "leaf");
        Assert.DoesNotContain(MergeJobEngine.Tasks(plan, TaskShape.Fused, []), t => t.Kind == "leaf");

        // A job whose auto shape turns out a tree gets the scratch directory its leaves write into.
        var job = new Engine.Ledger.JobRecord(7, Engine.Ledger.JobState.Running, File.ReadAllText(dir.File("recipe.yaml")), dir.Path,
            new MergeJobOptions { HashInputs = false }.ToJson(), "a", null, null, DateTimeOffset.UtcNow, null, null);
        using var engine = new MergeJobEngine();
        var planned = await engine.PlanAsync(job, [Silo("a", "m0.safetensors"), Silo("b", "m1.safetensors")], CancellationToken.None);
        Assert.Contains(planned.Tasks, t => t.Kind == "leaf");
        Assert.Equal(MergeJobOptions.FromJson(planned.Options).Scratch, Assert.Single(Directory.EnumerateDirectories(dir.Path, "*.scratch")));
        await engine.CleanupAsync(job with { Options = planned.Options }, CancellationToken.None);
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Path, ".*"));
    }
}
