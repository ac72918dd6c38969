using System.Diagnostics;
using System.Globalization;
using System.Text;
using MergeCluster.Engine.Execution;
using MergeCluster.Merge.Numerics;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Engine.Selection;

/// <summary>
/// Runs shards of a sweep with one set of buffers (one per thread). Per key, the candidates' planned tensors are
/// grouped by what they compute: a tensor several candidates share (a component the sweep does not vary, a copy from
/// one model) is computed once by the merge's own <see cref="ShardExecutor.RunTensor"/> and written to each of them.
/// Linear sums that differ (a model left out) run together: each input window is mapped once, each reduction group's
/// distinct chains of terms share their common prefix with the group's longest chain (from +0.0, in plan order, as
/// the merge sums them), the fixed tree's nodes are shared where their children are, and every candidate divides and
/// rounds its own root, so each gets the bits of its own merge. Non-linear tensors that differ run per candidate.
/// </summary>
internal sealed unsafe class SweepExecutor
{
    private const int Block = ShardExecutor.BlockElements;

    private readonly SweepJob _job;
    private readonly InputSet _inputs;
    private readonly IReadOnlyList<SafetensorsWriter> _writers;
    private readonly MergeProgress? _progress;
    private readonly ShardExecutor _executor;
    private readonly int _groupCount;
    private readonly nint[] _window;
    private readonly List<double[]> _pool = [];
    private readonly List<OutputBuffer> _outs = [];

    public SweepExecutor(SweepJob job, InputSet inputs, IReadOnlyList<SafetensorsWriter> writers, MergeProgress? progress)
    {
        _job = job;
        _inputs = inputs;
        _writers = writers;
        _progress = progress;
        var plans = job.Candidates.Select(c => c.Plan).ToArray();
        _executor = new ShardExecutor(plans, inputs, progress);
        _groupCount = plans[0].GroupCount;
        Debug.Assert(plans.All(p => p.GroupCount == _groupCount), "candidates keep the recipe's models: list, so its groups");
        _window = new nint[job.Inputs.Length];
    }

    public void Run(SweepShard shard, CancellationToken ct)
    {
        try
        {
            for (int k = shard.FirstKey; k < shard.FirstKey + shard.KeyCount; k++)
            {
                ct.ThrowIfCancellationRequested();
                RunKey(_job.Keys[k], ct);
            }
        }
        catch
        {
            DrainOutput(observe: false);
            throw;
        }
        DrainOutput();
    }

    /// <summary>Waits for the shard's output writes still in flight (see <see cref="ShardExecutor.DrainOutput"/>).</summary>
    private void DrainOutput(bool observe = true)
    {
        _executor.DrainOutput(observe);
        foreach (var buffer in _outs) buffer.Drain(observe);
    }

    private void RunKey(SweepKey key, CancellationToken ct)
    {
        // Candidates grouped by what their tensor computes; each group is computed once.
        var groups = new Dictionary<string, (PlannedTensor Tensor, List<OutputTarget> Targets)>(StringComparer.Ordinal);
        var order = new List<string>();
        for (int c = 0; c < key.Tensors.Length; c++)
        {
            if (key.Tensors[c] is not { } tensor) continue;
            string identity = Identity(tensor, c);
            if (!groups.TryGetValue(identity, out var group))
            {
                groups[identity] = group = (tensor, []);
                order.Add(identity);
            }
            group.Targets.Add(new OutputTarget(_writers[c], tensor.Output));
        }
        var sums = new List<(PlannedTensor Tensor, OutputTarget[] Targets)>();
        foreach (string identity in order)
        {
            var (tensor, targets) = groups[identity];
            if (tensor.Op == TensorOp.Combine) sums.Add((tensor, targets.ToArray()));
            else _executor.RunTensor(tensor, targets.ToArray(), ct);
        }
        if (sums.Count == 1) _executor.RunTensor(sums[0].Tensor, sums[0].Targets, ct);
        else if (sums.Count > 1) RunShared(key, sums, ct);
    }

    /// <summary>
    /// What a tensor computes, as a string: its operation, dtype, divisor and terms (input, coefficient, group). A
    /// non-linear tensor is identified by its candidate when the sweep varies its component (its program is that
    /// candidate's own), and shared otherwise (every candidate has the same rule there).
    /// </summary>
    private string Identity(PlannedTensor tensor, int candidate)
    {
        var sb = new StringBuilder();
        sb.Append((int)tensor.Op).Append('|').Append(tensor.Output.DType).Append('|').Append(BitConverter.DoubleToInt64Bits(tensor.Divisor));
        foreach (var t in tensor.Terms)
            sb.Append('|').Append(t.Input).Append(':').Append(BitConverter.DoubleToInt64Bits(t.Coefficient).ToString(CultureInfo.InvariantCulture)).Append(':').Append(t.Group);
        if (tensor.Op == TensorOp.Method && tensor.Component == _job.Component) sb.Append("|candidate ").Append(candidate);
        return sb.ToString();
    }

    /// <summary>The distinct chains of one reduction group, each sharing a prefix with the group's longest.</summary>
    private sealed record GroupChains(TermSource[] Longest, List<(TermSource[] Terms, int Shared)> Others);

    private void RunShared(SweepKey key, List<(PlannedTensor Tensor, OutputTarget[] Targets)> sums, CancellationToken ct)
    {
        long elements = sums[0].Tensor.ElementCount;
        var outType = sums[0].Tensor.Output.DType;
        int outSize = outType.Size();

        // Every input window once, whatever the number of candidates reading it.
        var reads = new SortedDictionary<int, TermSource>();
        foreach (var (tensor, _) in sums)
        {
            Debug.Assert(tensor.ElementCount == elements && tensor.Output.DType == outType);
            foreach (var t in tensor.Terms) reads.TryAdd(t.Input, t);
        }
        int rawPerElement = reads.Values.Sum(t => t.Tensor.DType.Size()) + sums.Count * outSize;
        int chunk = Math.Max(Block, Math.Min(ShardExecutor.DefaultChunkElements, ShardExecutor.WindowBudgetBytes / rawPerElement) / Block * Block);
        while (_outs.Count < sums.Count) _outs.Add(new OutputBuffer(chunk * outSize));

        // Per reduction group: the distinct chains and, per tensor, which chain is its (-1: no term in the group).
        var chains = new GroupChains?[_groupCount];
        var chainOf = new int[sums.Count, _groupCount];
        var buffersOf = new List<double[]>[_groupCount];
        int pooled = 0;
        for (int g = 0; g < _groupCount; g++)
        {
            var distinct = new List<TermSource[]>();
            for (int d = 0; d < sums.Count; d++)
            {
                var chain = sums[d].Tensor.Terms.Where(t => t.Group == g).ToArray();
                if (chain.Length == 0) { chainOf[d, g] = -1; continue; }
                int found = distinct.FindIndex(c => SameChain(c, chain));
                if (found < 0) { distinct.Add(chain); found = distinct.Count - 1; }
                chainOf[d, g] = found;
            }
            if (distinct.Count == 0) continue;
            int longest = Enumerable.Range(0, distinct.Count).MaxBy(i => distinct[i].Length);
            var others = new List<(TermSource[], int)>();
            // Chains are renumbered: 0 is the longest, then the others in order.
            var renumber = new int[distinct.Count];
            renumber[longest] = 0;
            for (int i = 0, next = 1; i < distinct.Count; i++)
            {
                if (i == longest) continue;
                renumber[i] = next++;
                others.Add((distinct[i], SharedPrefix(distinct[longest], distinct[i])));
            }
            for (int d = 0; d < sums.Count; d++) if (chainOf[d, g] >= 0) chainOf[d, g] = renumber[chainOf[d, g]];
            chains[g] = new GroupChains(distinct[longest], others);
            buffersOf[g] = [];
            for (int i = 0; i < distinct.Count; i++) buffersOf[g].Add(Buffer(pooled++));
        }

        var memo = new Dictionary<(double[], double[]), double[]>(ReferencePair.Instance);
        var level = new double[]?[_groupCount];
        var scratch = Buffer(pooled++);
        for (long start = 0; start < elements; start += chunk)
        {
            ct.ThrowIfCancellationRequested();
            int n = (int)Math.Min(chunk, elements - start);
            long bytes = 0;
            foreach (var (input, term) in reads)
            {
                int size = term.Tensor.DType.Size();
                fixed (byte* p = _inputs.Window(term, start * size, n * size)) _window[input] = (nint)p;
                bytes += n * size;
            }
            for (int d = 0; d < sums.Count; d++) _outs[d].Place(sums[d].Targets[0].FileOffset(start), n * outSize);
            for (int b = 0; b < n; b += Block)
            {
                int m = Math.Min(Block, n - b);
                for (int g = 0; g < _groupCount; g++)
                    if (chains[g] is { } gc) SumChains(gc, buffersOf[g], b, m);

                // Tree nodes are shared by all candidates of this block: a node is made once per pair of children.
                int nodes = pooled;
                memo.Clear();
                for (int d = 0; d < sums.Count; d++)
                {
                    var (tensor, _) = sums[d];
                    for (int g = 0; g < _groupCount; g++) level[g] = chainOf[d, g] < 0 ? null : buffersOf[g][chainOf[d, g]];
                    var root = Reduce(level, m, memo, ref nodes)
                        ?? throw new InvalidOperationException($"tensor '{tensor.Output.Key}' has no terms");
                    root.AsSpan(0, m).CopyTo(scratch);
                    MergeKernels.Finish(scratch.AsSpan(0, m), tensor.Divisor, outType, _outs[d].Chunk(b * outSize, m * outSize));
                }
            }
            foreach (var (input, term) in reads)
            {
                int size = term.Tensor.DType.Size();
                _inputs.Release(term, start * size, n * size);
            }
            _progress?.Add(bytes, 0, key.Component);
            for (int d = 0; d < sums.Count; d++)
            {
                var targets = sums[d].Targets;
                OutputTarget.WriteAll(_outs[d], targets, start * outSize, n * outSize);
                _progress?.Add(0, (long)n * outSize * targets.Length, key.Component);
            }
        }
    }

    /// <summary>
    /// The group's chains for elements [b, b+m): the longest summed term by term from +0.0; before its term s, each
    /// chain that shares its first s terms takes a copy of the running sum and then adds its own remaining terms.
    /// </summary>
    private void SumChains(GroupChains gc, List<double[]> buffers, int b, int m)
    {
        var main = buffers[0].AsSpan(0, m);
        main.Clear();
        for (int s = 0; s <= gc.Longest.Length; s++)
        {
            for (int o = 0; o < gc.Others.Count; o++)
            {
                var (terms, shared) = gc.Others[o];
                if (shared != s) continue;
                var own = buffers[o + 1].AsSpan(0, m);
                main.CopyTo(own);
                for (int t = shared; t < terms.Length; t++) Accumulate(terms[t], own, b, m);
            }
            if (s < gc.Longest.Length) Accumulate(gc.Longest[s], main, b, m);
        }
    }

    private void Accumulate(TermSource term, Span<double> acc, int b, int m)
    {
        int size = term.Tensor.DType.Size();
        var source = new ReadOnlySpan<byte>((byte*)_window[term.Input] + (long)b * size, m * size);
        MergeKernels.Accumulate(term.Tensor.DType, source, term.Coefficient, acc);
    }

    /// <summary>
    /// The fixed tree of <see cref="ReductionTree"/> over one tensor's group sums (null: absent), a node made once per
    /// pair of children (memo), so candidates that differ in one group share every other node. Returns the root.
    /// </summary>
    private double[]? Reduce(double[]?[] leaves, int m, Dictionary<(double[], double[]), double[]> memo, ref int nodes)
    {
        var level = (double[]?[])leaves.Clone();
        int width = level.Length;
        while (width > 1)
        {
            int next = (width + 1) / 2;
            for (int i = 0; i < next; i++)
            {
                var left = level[2 * i];
                var right = 2 * i + 1 < width ? level[2 * i + 1] : null;
                if (right is null) { level[i] = left; continue; }
                if (left is null) { level[i] = right; continue; }
                if (!memo.TryGetValue((left, right), out var sum))
                {
                    sum = Buffer(nodes++);
                    left.AsSpan(0, m).CopyTo(sum);
                    MergeKernels.Combine(sum.AsSpan(0, m), right.AsSpan(0, m));
                    memo[(left, right)] = sum;
                }
                level[i] = sum;
            }
            width = next;
        }
        return level[0];
    }

    private double[] Buffer(int index)
    {
        while (_pool.Count <= index) _pool.Add(new double[Block]);
        return _pool[index];
    }

    private static bool SameChain(TermSource[] a, TermSource[] b)
    {
        if (a.Length != b.Length) return false;
        for (int i = 0; i < a.Length; i++)
            if (!SameTerm(a[i], b[i])) return false;
        return true;
    }

    private static int SharedPrefix(TermSource[] a, TermSource[] b)
    {
        int i = 0;
        while (i < a.Length && i < b.Length && SameTerm(a[i], b[i])) i++;
        return i;
    }

    private static bool SameTerm(TermSource a, TermSource b) =>
        a.Input == b.Input && BitConverter.DoubleToInt64Bits(a.Coefficient) == BitConverter.DoubleToInt64Bits(b.Coefficient);

    private sealed class ReferencePair : IEqualityComparer<(double[], double[])>
    {
        public static readonly ReferencePair Instance = new();
        public bool Equals((double[], double[]) x, (double[], double[]) y) => ReferenceEquals(x.Item1, y.Item1) && ReferenceEquals(x.Item2, y.Item2);
        public int GetHashCode((double[], double[]) obj) =>
            HashCode.Combine(System.Runtime.CompilerServices.RuntimeHelpers.GetHashCode(obj.Item1), System.Runtime.CompilerServices.RuntimeHelpers.GetHashCode(obj.Item2));
    }
}
