using System.Diagnostics;
using System.Numerics.Tensors;
using MergeCluster.Engine.Execution;
using MergeCluster.Merge.Numerics;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Engine.Selection;

/// <summary>
/// A distance map as a job of tasks, independent of who schedules them: one task per shard of keys, each reading its
/// keys' tensors once from every model and returning the shard's <see cref="DistanceStatistics"/>; the job's result is
/// the partials added in shard order. Locally the shards run on this process's threads (<see cref="RunAsync"/>); a
/// cluster can run them anywhere the models are and add the partials it gets back in the same order.
/// </summary>
public sealed class DistanceJob
{
    public DistanceJob(DistancePlan plan) => Plan = plan;

    public DistancePlan Plan { get; }

    /// <summary>Maps the models for running shards on this machine; dispose it when done.</summary>
    public DistanceRun OpenRun(MergeProgress? progress = null) => new(Plan, progress);

    /// <summary>
    /// Every shard on <paramref name="threads"/> threads, lowest index first, partials folded in shard order as soon as
    /// they are next in line (so memory holds a few partials, not one per shard).
    /// </summary>
    public async Task<DistanceStatistics> RunAsync(int threads, MergeProgress? progress, CancellationToken ct)
    {
        using var run = OpenRun(progress);
        var total = new DistanceStatistics(Plan);
        var pending = new Dictionary<int, DistanceStatistics>();
        int next = -1, folded = 0;
        var gate = new object();

        void Work()
        {
            while (true)
            {
                int index = Interlocked.Increment(ref next);
                if (index >= Plan.Shards.Length || ct.IsCancellationRequested) return;
                var partial = run.RunShard(Plan.Shards[index], ct);
                lock (gate)
                {
                    pending[index] = partial;
                    while (pending.Remove(folded, out var ready))
                    {
                        total.Add(ready);
                        folded++;
                    }
                }
            }
        }

        var workers = Enumerable.Range(0, Math.Clamp(threads, 1, Math.Max(1, Plan.Shards.Length)))
            .Select(_ => Task.Factory.StartNew(Work, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default)).ToArray();
        await Task.WhenAll(workers);
        ct.ThrowIfCancellationRequested();
        Debug.Assert(folded == Plan.Shards.Length);
        return total;
    }
}

/// <summary>What one machine keeps open to run a distance job's shards: the models mapped, an executor per thread.</summary>
public sealed class DistanceRun : IDisposable
{
    private readonly DistancePlan _plan;
    private readonly MergeProgress? _progress;
    private readonly InputSet _inputs;
    private readonly System.Collections.Concurrent.ConcurrentBag<DistanceExecutor> _idle = new();

    internal DistanceRun(DistancePlan plan, MergeProgress? progress)
    {
        _plan = plan;
        _progress = progress;
        _inputs = new InputSet(plan.Models);
    }

    /// <summary>Reads one shard's keys from every model that holds them and returns the shard's partial statistics; thread-safe.</summary>
    public DistanceStatistics RunShard(DistanceShard shard, CancellationToken ct)
    {
        var executor = _idle.TryTake(out var e) ? e : new DistanceExecutor(_plan, _inputs, _progress);
        try { return executor.Run(shard, ct); }
        finally { _idle.Add(executor); }
    }

    public void Dispose() => _inputs.Dispose();
}

/// <summary>
/// Runs shards of a distance job with one set of buffers (one per thread). Per key and per group of models with one
/// shape, each model's window is mapped once per chunk, compared byte for byte with the windows of the models it may
/// still be identical to, decoded to float64 block by block and fed to <see cref="PairwiseStatistics"/>.
/// </summary>
internal sealed unsafe class DistanceExecutor
{
    private const int Block = ShardExecutor.BlockElements;

    private readonly DistancePlan _plan;
    private readonly InputSet _inputs;
    private readonly MergeProgress? _progress;
    private readonly double[][] _buffers;
    private readonly Dictionary<int, PairwiseStatistics> _stats = new();
    private readonly nint[] _window;
    private readonly int[] _length;
    private readonly long[] _nonFinite;

    public DistanceExecutor(DistancePlan plan, InputSet inputs, MergeProgress? progress)
    {
        _plan = plan;
        _inputs = inputs;
        _progress = progress;
        _buffers = new double[plan.Count][];
        for (int m = 0; m < plan.Count; m++) _buffers[m] = new double[Block];
        _window = new nint[plan.Count];
        _length = new int[plan.Count];
        _nonFinite = new long[plan.Count];
    }

    public DistanceStatistics Run(DistanceShard shard, CancellationToken ct)
    {
        var result = new DistanceStatistics(_plan);
        for (int k = shard.FirstKey; k < shard.FirstKey + shard.KeyCount; k++)
        {
            ct.ThrowIfCancellationRequested();
            RunKey(_plan.Keys[k], result, ct);
        }
        return result;
    }

    private void RunKey(DistanceKey key, DistanceStatistics result, CancellationToken ct)
    {
        int c = _plan.Components.IndexOf(key.Component);
        var component = result.Components[c];
        var block = key.Block >= 0 ? result.Blocks[key.Block] : null;
        var differs = result.Differs[c];
        int n = _plan.Count;
        for (int i = 0; i < n; i++)
        {
            for (int j = i + 1; j < n; j++)
            {
                int p = _plan.Pair(i, j);
                var a = key.Tensors[i];
                var b = key.Tensors[j];
                if ((a is null) != (b is null))
                {
                    differs[p] = true;
                    if (key.IsFloat)
                    {
                        component.OneSided[p]++;
                        if (block is not null) block.OneSided[p]++;
                    }
                }
                else if (a is not null && b is not null)
                {
                    if (a.DType != b.DType) differs[p] = true;
                    if (key.ClassOf(i) != key.ClassOf(j))
                    {
                        differs[p] = true;
                        if (key.IsFloat)
                        {
                            component.ShapeMismatches[p]++;
                            if (block is not null) block.ShapeMismatches[p]++;
                        }
                    }
                }
            }
        }
        foreach (var members in key.Classes)
            if (members.Length > 1) RunClass(key, members, component, block, differs, result.NonFiniteValues[c], ct);
    }

    /// <summary>One group of models holding the key with one shape: one read of each, every pair's sums from it.</summary>
    private void RunClass(DistanceKey key, System.Collections.Immutable.ImmutableArray<int> members, PairTotals component, PairTotals? block,
        bool[] differs, long[] nonFiniteValues, CancellationToken ct)
    {
        var sources = new TermSource[members.Length];
        int bytesPerElement = 0;
        for (int k = 0; k < members.Length; k++)
        {
            var t = key.Tensors[members[k]]!;
            sources[k] = new TermSource(members[k], t, 1.0, 0);
            bytesPerElement += t.DType.Size();
        }
        long elements = key.Tensors[members[0]]!.ElementCount;
        int chunk = Math.Max(Block, Math.Min(ShardExecutor.DefaultChunkElements, ShardExecutor.WindowBudgetBytes / bytesPerElement) / Block * Block);

        PairwiseStatistics? stats = null;
        double[][]? vectors = null;
        if (key.IsFloat)
        {
            if (!_stats.TryGetValue(members.Length, out stats)) _stats[members.Length] = stats = new PairwiseStatistics(members.Length);
            stats.Reset();
            vectors = new double[members.Length][];
            for (int k = 0; k < members.Length; k++) vectors[k] = _buffers[k];
        }
        Array.Clear(_nonFinite);

        for (long start = 0; start < elements; start += chunk)
        {
            ct.ThrowIfCancellationRequested();
            int count = (int)Math.Min(chunk, elements - start);
            long bytes = 0;
            for (int k = 0; k < members.Length; k++)
            {
                int size = sources[k].Tensor.DType.Size();
                fixed (byte* w = _inputs.Window(sources[k], start * size, count * size)) _window[k] = (nint)w;
                _length[k] = count * size;
                bytes += count * size;
            }
            CompareBytes(key, members, differs);
            if (stats is not null)
            {
                for (int b = 0; b < count; b += Block)
                {
                    int m = Math.Min(Block, count - b);
                    for (int k = 0; k < members.Length; k++)
                    {
                        var type = sources[k].Tensor.DType;
                        int size = type.Size();
                        var values = _buffers[k].AsSpan(0, m);
                        DTypeConvert.ToFloat64(type, new ReadOnlySpan<byte>((byte*)_window[k] + (long)b * size, m * size), values);
                        // A finite block sums to a finite value (a few thousand weights cannot overflow float64).
                        if (!double.IsFinite(TensorPrimitives.Sum<double>(values))) _nonFinite[k] += CountNonFinite(values);
                    }
                    stats.Add(vectors!, 0, m);
                }
            }
            for (int k = 0; k < members.Length; k++)
            {
                int size = sources[k].Tensor.DType.Size();
                _inputs.Release(sources[k], start * size, count * size);
            }
            _progress?.Add(bytes, 0, key.Component);
        }
        if (stats is null) return;

        stats.Complete();
        for (int k = 0; k < members.Length; k++) nonFiniteValues[members[k]] += _nonFinite[k];
        for (int a = 0; a < members.Length; a++)
        {
            for (int b = a + 1; b < members.Length; b++)
            {
                int p = _plan.Pair(members[a], members[b]);
                if (_nonFinite[a] > 0 || _nonFinite[b] > 0)
                {
                    component.NonFiniteKeys[p]++;
                    if (block is not null) block.NonFiniteKeys[p]++;
                    continue;
                }
                Accumulate(component, p, stats, a, b);
                if (block is not null) Accumulate(block, p, stats, a, b);
            }
        }
    }

    private static void Accumulate(PairTotals totals, int p, PairwiseStatistics stats, int a, int b)
    {
        // Members are in model order, so a is the pair's lower model, as NormA means.
        totals.SquaredDistance[p].Add(stats.SquaredDistance(a, b));
        totals.Dot[p].Add(stats.Dot(a, b));
        totals.NormA[p].Add(stats.SquaredNorm(a));
        totals.NormB[p].Add(stats.SquaredNorm(b));
        totals.Keys[p]++;
    }

    /// <summary>Pairs of one dtype that are still identical compare this chunk's bytes; the first difference settles it.</summary>
    private void CompareBytes(DistanceKey key, System.Collections.Immutable.ImmutableArray<int> members, bool[] differs)
    {
        for (int a = 0; a < members.Length; a++)
        {
            for (int b = a + 1; b < members.Length; b++)
            {
                int p = _plan.Pair(members[a], members[b]);
                if (differs[p] || key.Tensors[members[a]]!.DType != key.Tensors[members[b]]!.DType) continue;
                var x = new ReadOnlySpan<byte>((byte*)_window[a], _length[a]);
                var y = new ReadOnlySpan<byte>((byte*)_window[b], _length[b]);
                if (!x.SequenceEqual(y)) differs[p] = true;
            }
        }
    }

    private static long CountNonFinite(ReadOnlySpan<double> values)
    {
        long count = 0;
        foreach (double v in values) if (!double.IsFinite(v)) count++;
        return count;
    }
}
