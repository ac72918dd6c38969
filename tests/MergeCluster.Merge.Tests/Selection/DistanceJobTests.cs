using MergeCluster.Engine.Selection;
using MergeCluster.Merge.Tests.Merging;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Selection;

/// <summary>The distance job's partials: many shards on any number of threads fold to the same bits.</summary>
public class DistanceJobTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task Partials_of_many_shards_fold_to_the_same_bits_on_any_number_of_threads()
    {
        var paths = Enumerable.Range(1, 5).Select(s => Checkpoints.Write(_dir.File($"m{s}.safetensors"), s, s % 2 == 0 ? DType.BF16 : DType.F16)).ToArray();
        // One key per shard, so the fold order is exercised.
        var plan = DistancePlan.Create(paths[1..], paths[0], null, blocks: true, shardBytes: 1);
        Assert.True(plan.Shards.Length >= 8, $"{plan.Shards.Length} shards");
        var one = DistanceReport.Create(plan, await new DistanceJob(plan).RunAsync(1, null, CancellationToken.None)).ToJson();
        var three = DistanceReport.Create(plan, await new DistanceJob(plan).RunAsync(3, null, CancellationToken.None)).ToJson();
        Assert.Equal(one, three);

        // One shard sums the same keys in another grouping: the same figures to float64 rounding.
        var whole = DistancePlan.Create(paths[1..], paths[0], null, blocks: true);
        Assert.Single(whole.Shards);
        var a = DistanceReport.Create(plan, await new DistanceJob(plan).RunAsync(2, null, CancellationToken.None));
        var b = DistanceReport.Create(whole, await new DistanceJob(whole).RunAsync(2, null, CancellationToken.None));
        for (int c = 0; c < a.Components.Count; c++)
            for (int i = 0; i < 5; i++)
                for (int j = 0; j < 5; j++)
                    if (i != j) SelectionModels.AssertClose(b.Components[c].L2[i, j], a.Components[c].L2[i, j], $"{a.Components[c].Name} {i}-{j}");
    }
}
