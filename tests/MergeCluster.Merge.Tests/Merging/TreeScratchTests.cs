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
    public void Auto_shape_builds_a_tree_only_when_no_silo_holds_every_model()
    {
        using var dir = new TempDirectory();
        for (int i = 0; i < 2; i++) Checkpoints.Write(dir.File($"m{i}.safetensors"), i + 1, DType.F16);
        File.WriteAllText(dir.File("recipe.yaml"), "models:\n  m0: m0.safetensors\n  m1: m1.safetensors\ncomponents:\n  all: { method: mean, models: [m0, m1] }\noutput: out.safetensors\nreduce: { group: 1 }\n");
        var recipe = Recipe.Load(dir.File("recipe.yaml"));
        var plan = Planning.Planner.Create(recipe);
        IReadOnlyCollection<string> Holds(params string[] models) => models;

        Assert.Equal(TaskShape.Fused, MergeJob.ShapeFor(plan, [Holds("m0.safetensors", "m1.safetensors", "other.safetensors"), Holds("m0.safetensors")]));
        Assert.Equal(TaskShape.Tree, MergeJob.ShapeFor(plan, [Holds("m0.safetensors"), Holds("m1.safetensors")]));
        Assert.Equal(TaskShape.Fused, MergeJob.ShapeFor(plan, [Holds(), Holds()]));
        Assert.Contains(MergeJob.TasksFor(plan, TaskShape.Tree), t => t.Kind == TaskKinds.Leaf);
        Assert.DoesNotContain(MergeJob.TasksFor(plan, TaskShape.Fused), t => t.Kind == TaskKinds.Leaf);

        // A job whose auto shape turns out a tree gets the scratch directory its leaves write into, and its own
        // temporary output; cleanup removes both.
        using var job = MergeJob.Create(recipe, new MergeJobOptions { HashInputs = false }, new JobEnvironment(), [Holds("m0.safetensors"), Holds("m1.safetensors")]);
        Assert.Equal(TaskShape.Tree, job.Shape);
        Assert.Contains(job.Tasks, t => t.Kind == TaskKinds.Leaf);
        Assert.True(Directory.Exists(job.Files.Scratch));
        Assert.True(File.Exists(job.Files.TempOutput));
        MergeJob.Cleanup(job.Files);
        Assert.False(Directory.Exists(job.Files.Scratch));
        Assert.False(File.Exists(job.Files.TempOutput));
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Path, ".*"));
    }
}
