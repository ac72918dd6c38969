using System.Collections.Concurrent;
using System.Diagnostics;
using MergeCluster.Engine.Execution;
using MergeCluster.Engine.Telemetry;
using MergeCluster.Merge.Recipes;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Merging;

/// <summary>
/// Tests that listen to the engine's spans: an ActivityListener hears every merge in the process, so these run alone.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SpanListeningTests
{
    public const string Name = "span listening";
}

[Collection(SpanListeningTests.Name)]
public class MergeTelemetryTests
{
    [Fact]
    public async Task A_merge_is_one_trace_whose_task_spans_name_shard_models_and_bytes()
    {
        using var dir = new TempDirectory();
        for (int i = 0; i < 3; i++) Checkpoints.Write(dir.File($"m{i}.safetensors"), i + 1, DType.F16);
        File.WriteAllText(dir.File("recipe.yaml"), "models:\n  m0: m0.safetensors\n  m1: m1.safetensors\n  m2: m2.safetensors\ncomponents:\n  all: { method: mean, models: [m0, m1, m2] }\noutput: out.safetensors\nreduce: { group: 1 }\n");

        var spans = new ConcurrentBag<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == MergeTelemetry.Name,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = spans.Add,
        };
        ActivitySource.AddActivityListener(listener);

        await LocalMerge.RunAsync(Recipe.Load(dir.File("recipe.yaml")), new LocalMergeOptions { Threads = 2, HashInputs = false, Shape = TaskShape.Tree }, null, CancellationToken.None);

        var tasks = spans.Where(s => s.OperationName == MergeTelemetry.TaskSpan).ToList();
        Assert.NotEmpty(tasks);
        Assert.Single(spans.Select(s => s.TraceId).Distinct());
        var leaves = tasks.Where(t => (string?)t.GetTagItem(MergeTelemetry.KindTag) == "leaf").ToList();
        Assert.Equal(["m0", "m1", "m2"], leaves.Select(l => (string)l.GetTagItem(MergeTelemetry.ModelsTag)!).Distinct().Order());
        Assert.All(tasks, t => Assert.NotNull(t.GetTagItem(MergeTelemetry.ShardTag)));
        Assert.All(leaves, t => Assert.True((long)t.GetTagItem("mergecluster.bytes.read")! > 0));
        Assert.Contains(spans, s => s.OperationName == "mergecluster.write.partial");
    }
}
