using MergeCluster.Engine.Ledger;
using MergeCluster.Engine.Planning;
using MergeCluster.Merge.Recipes;

namespace MergeCluster.Engine.Execution;

/// <summary>Settings of a merge on this machine.</summary>
public sealed record LocalMergeOptions
{
    public int Threads { get; init; } = Environment.ProcessorCount;
    /// <summary>Upper bound of input bytes per shard; small merges use smaller shards so every thread has work.</summary>
    public long ShardBytes { get; init; } = 64L << 20;
    public string? OutputPath { get; init; }
    public bool HashInputs { get; init; } = true;
    public TaskShape Shape { get; init; } = TaskShape.Fused;
}

/// <summary>
/// The embedded default: the merge job engine run on this machine's threads, with the same plan, tasks and
/// assembly as on a cluster, so the output is the same file bit for bit.
/// </summary>
public static class LocalMerge
{
    public static async Task<string> RunAsync(Recipe recipe, LocalMergeOptions options, MergeProgress? progress, CancellationToken ct)
    {
        var probe = Planner.Create(recipe, new PlanOptions { OutputPath = options.OutputPath });
        long shardBytes = ShardBytesFor(probe.InputBytes, options.Threads, options.ShardBytes);
        var job = new JobRecord(Environment.ProcessId, JobState.Running, recipe.Text, recipe.Directory,
            new MergeJobOptions { Shape = options.Shape, ShardBytes = shardBytes, Output = options.OutputPath, HashInputs = options.HashInputs }.ToJson(),
            null, null, null, DateTimeOffset.UtcNow, null, null);
        using var engine = new MergeJobEngine(null, options.Threads, progress);
        var tasks = await engine.PlanAsync(job, [], ct);
        try
        {
            await RunGraphAsync(engine, job, tasks, options.Threads, ct);
            await engine.AssembleAsync(job, ct);
        }
        catch
        {
            await engine.CleanupAsync(job, CancellationToken.None);
            throw;
        }
        return probe.OutputPath;
    }

    /// <summary>Shards never change the output's bits; they only need to be many enough to keep every thread busy.</summary>
    public static long ShardBytesFor(long inputBytes, int threads, long maxShardBytes) =>
        Math.Clamp(inputBytes / (Math.Max(1, threads) * 8L), 1L << 20, Math.Max(1L << 20, maxShardBytes));

    /// <summary>Runs tasks whose dependencies are done on up to <paramref name="threads"/> threads.</summary>
    private static async Task RunGraphAsync(MergeJobEngine engine, JobRecord job, IReadOnlyList<TaskSpec> tasks, int threads, CancellationToken ct)
    {
        var done = new HashSet<string>(StringComparer.Ordinal);
        var pending = new List<TaskSpec>(tasks);
        var running = new Dictionary<Task, TaskSpec>();
        using var failed = CancellationTokenSource.CreateLinkedTokenSource(ct);
        while (pending.Count > 0 || running.Count > 0)
        {
            for (int i = 0; i < pending.Count && running.Count < threads; i++)
            {
                var spec = pending[i];
                if (!spec.DependsOn.All(done.Contains)) continue;
                pending.RemoveAt(i--);
                var lease = new TaskLease(job.Id, running.Count, spec.Name, spec.Kind, spec.Payload, 1, "local", DateTimeOffset.MaxValue, null);
                running[engine.RunTaskAsync(job, lease, failed.Token)] = spec;
            }
            var finished = await Task.WhenAny(running.Keys);
            var completed = running[finished];
            running.Remove(finished);
            if (finished.IsFaulted || finished.IsCanceled)
            {
                failed.Cancel();
                try { await Task.WhenAll(running.Keys); } catch { /* the first failure is the one to report */ }
                await finished;
            }
            done.Add(completed.Name);
        }
    }
}
