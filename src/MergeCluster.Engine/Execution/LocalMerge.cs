using MergeCluster.Engine.Ledger;
using MergeCluster.Planning;
using MergeCluster.Engine.Runtime;
using MergeCluster.Merge;
using MergeCluster.Merge.Recipes;

namespace MergeCluster.Engine.Execution;

/// <summary>Settings of a merge on this machine.</summary>
public sealed record LocalMergeOptions
{
    public int Threads { get; init; } = Environment.ProcessorCount;
    /// <summary>Upper bound of input bytes per shard; small merges use smaller shards so every thread has work.</summary>
    public long ShardBytes { get; init; } = 256L << 20;
    public string? OutputPath { get; init; }
    public bool HashInputs { get; init; } = true;
    public TaskShape Shape { get; init; } = TaskShape.Fused;
    public NonFinitePolicy NonFinite { get; init; } = NonFinitePolicy.Warn;
    /// <summary>Told of each output tensor with NaN or infinite values, after the output is written (policy warn).</summary>
    public Action<NonFiniteTensor>? OnNonFinite { get; init; }
    /// <summary>
    /// The caller's plan of this recipe with this output, when it has made one (to check it, or print it): the merge
    /// uses it instead of reading every header again, and for a plan of a million tensors holds one plan, not two.
    /// </summary>
    public MergePlan? Plan { get; init; }
}

/// <summary>
/// The embedded default: the merge job engine run by the same coordinator and workers as a cluster, over an
/// in-memory ledger with one in-process silo, so the output is the same file bit for bit.
/// </summary>
public static class LocalMerge
{
    public static async Task<string> RunAsync(Recipe recipe, LocalMergeOptions options, MergeProgress? progress, CancellationToken ct)
    {
        long inputBytes = (options.Plan ?? Planner.Create(recipe, new PlanOptions { OutputPath = options.OutputPath })).InputBytes;
        long shardBytes = ShardBytesFor(inputBytes, options.Threads, options.ShardBytes);
        string jobOptions = new MergeJobOptions
        {
            Shape = options.Shape, ShardBytes = shardBytes, Output = options.OutputPath, HashInputs = options.HashInputs, NonFinite = options.NonFinite,
        }.ToJson();
        using var engine = new MergeJobEngine(null, options.Threads, progress, embedded: true) { OnNonFinite = options.OnNonFinite, KnownPlan = options.Plan };
        var job = await EmbeddedRun.RunAsync(engine, recipe.Text, recipe.Directory, jobOptions, Math.Max(1, options.Threads), ct);
        ct.ThrowIfCancellationRequested();
        return job.State switch
        {
            JobState.Succeeded => options.OutputPath ?? recipe.OutputPath,
            _ => throw new MergeException(job.Error ?? $"merge {job.State.ToString().ToLowerInvariant()}"),
        };
    }

    /// <summary>Shards never change the output's bits; they only need to be many enough to keep every thread busy.</summary>
    public static long ShardBytesFor(long inputBytes, int threads, long maxShardBytes) =>
        Math.Clamp(inputBytes / (Math.Max(1, threads) * 8L), 1L << 20, Math.Max(1L << 20, maxShardBytes));
}
