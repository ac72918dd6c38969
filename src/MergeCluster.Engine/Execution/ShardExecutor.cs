using System.Runtime.InteropServices;
using MergeCluster.Engine.Planning;
using MergeCluster.Merge.Numerics;
using MergeCluster.Safetensors;

namespace MergeCluster.Engine.Execution;

/// <summary>
/// Executes shards of a plan with one set of buffers (one instance per worker thread). Work is done in chunks of
/// elements; every operation is elementwise, so chunk size and thread count never change a bit of the output.
/// </summary>
public sealed class ShardExecutor
{
    /// <summary>Elements per chunk: large enough for long sequential reads, small enough to stay in cache-friendly buffers.</summary>
    public const int DefaultChunkElements = 1 << 18;

    private readonly MergePlan _plan;
    private readonly InputSet _inputs;
    private readonly MergeProgress? _progress;
    private readonly int _chunk;
    private readonly byte[] _raw;
    private readonly double[] _scratch;
    private readonly double[][] _groups;
    private readonly bool[] _present;

    /// <summary>Bytes this executor read from models and partials since it was created (for task telemetry).</summary>
    public long BytesRead { get; private set; }
    /// <summary>Bytes this executor wrote to the output and partials.</summary>
    public long BytesWritten { get; private set; }

    public ShardExecutor(MergePlan plan, InputSet inputs, MergeProgress? progress = null, int chunkElements = DefaultChunkElements)
    {
        _plan = plan;
        _inputs = inputs;
        _progress = progress;
        _chunk = chunkElements;
        _raw = new byte[chunkElements * sizeof(double)];
        _scratch = new double[chunkElements];
        _groups = new double[Math.Max(plan.GroupCount, 2)][];
        for (int g = 0; g < _groups.Length; g++) _groups[g] = new double[chunkElements];
        _present = new bool[_groups.Length];
    }

    /// <summary>Runs a whole shard in memory, the reduction tree included, writing its tensors into the output.</summary>
    public void RunFused(Shard shard, SafetensorsWriter output, CancellationToken ct)
    {
        foreach (int index in shard.TensorIndices)
        {
            ct.ThrowIfCancellationRequested();
            var tensor = _plan.Tensors[index];
            if (tensor.Op == TensorOp.Copy)
            {
                Copy(tensor, output, ct);
                continue;
            }
            for (long start = 0; start < tensor.ElementCount; start += _chunk)
            {
                int n = (int)Math.Min(_chunk, tensor.ElementCount - start);
                for (int g = 0; g < _plan.GroupCount; g++) _present[g] = SumGroup(tensor, g, start, n);
                if (!ReductionTree.Reduce(_present, _groups, _plan.GroupCount, n))
                    throw new InvalidOperationException($"tensor '{tensor.Output.Key}' has no terms");
                WriteFinished(tensor, start, n, _groups[0], output);
            }
        }
    }

    /// <summary>A leaf of the cluster's tree: the float64 partial sum of one group over the shard, written to <paramref name="partial"/>.</summary>
    public void RunLeaf(Shard shard, int group, Stream partial, CancellationToken ct)
    {
        foreach (int index in shard.TensorIndices)
        {
            var tensor = _plan.Tensors[index];
            if (tensor.Op != TensorOp.Combine || !tensor.HasGroup(group)) continue;
            for (long start = 0; start < tensor.ElementCount; start += _chunk)
            {
                ct.ThrowIfCancellationRequested();
                int n = (int)Math.Min(_chunk, tensor.ElementCount - start);
                SumGroup(tensor, group, start, n);
                partial.Write(MemoryMarshal.AsBytes(_groups[group].AsSpan(0, n)));
                BytesWritten += n * sizeof(double);
            }
        }
    }

    /// <summary>
    /// An inner node of the cluster's tree: reads the partials of its two children (either may be absent for a tensor)
    /// and writes their sum, with exactly the in-memory tree's rule.
    /// </summary>
    public void RunReduce(Shard shard, PartialNode node, PartialNode left, PartialNode right, Stream leftData, Stream rightData, Stream partial, CancellationToken ct)
    {
        foreach (int index in shard.TensorIndices)
        {
            var tensor = _plan.Tensors[index];
            if (tensor.Op != TensorOp.Combine || !node.Has(tensor)) continue;
            bool hasLeft = left.Has(tensor), hasRight = right.Has(tensor);
            for (long start = 0; start < tensor.ElementCount; start += _chunk)
            {
                ct.ThrowIfCancellationRequested();
                int n = (int)Math.Min(_chunk, tensor.ElementCount - start);
                _present[0] = hasLeft;
                _present[1] = hasRight;
                if (hasLeft) ReadDoubles(leftData, _groups[0].AsSpan(0, n));
                if (hasRight) ReadDoubles(rightData, _groups[1].AsSpan(0, n));
                ReductionTree.CombineInto(_present, _groups, 0, 1, n);
                partial.Write(MemoryMarshal.AsBytes(_groups[0].AsSpan(0, n)));
                BytesWritten += n * sizeof(double);
            }
        }
    }

    /// <summary>The root of a shard: divides and rounds the root partial (null when the shard has nothing to combine) and copies the rest.</summary>
    public void RunFinal(Shard shard, PartialNode? root, Stream? rootData, SafetensorsWriter output, CancellationToken ct)
    {
        foreach (int index in shard.TensorIndices)
        {
            ct.ThrowIfCancellationRequested();
            var tensor = _plan.Tensors[index];
            if (tensor.Op == TensorOp.Copy)
            {
                Copy(tensor, output, ct);
                continue;
            }
            if (root is null || rootData is null || !root.Has(tensor))
                throw new InvalidOperationException($"root partial lacks '{tensor.Output.Key}'");
            for (long start = 0; start < tensor.ElementCount; start += _chunk)
            {
                int n = (int)Math.Min(_chunk, tensor.ElementCount - start);
                ReadDoubles(rootData, _groups[0].AsSpan(0, n));
                WriteFinished(tensor, start, n, _groups[0], output, countInput: false);
            }
        }
    }

    /// <summary>Σ coefficient·source over the terms of one group for elements [start, start+n); false when the group has none.</summary>
    private bool SumGroup(PlannedTensor tensor, int group, long start, int n)
    {
        var acc = _groups[group].AsSpan(0, n);
        bool any = false;
        foreach (var term in tensor.Terms)
        {
            if (term.Group != group) continue;
            if (!any) acc.Clear();
            any = true;
            int size = term.Tensor.DType.Size();
            var raw = _raw.AsSpan(0, n * size);
            _inputs.Read(term, start * size, raw);
            BytesRead += raw.Length;
            MergeKernels.Accumulate(term.Tensor.DType, raw, term.Coefficient, acc, _scratch);
            _progress?.Add(raw.Length, 0, tensor.Component);
        }
        return any;
    }

    private void WriteFinished(PlannedTensor tensor, long start, int n, double[] acc, SafetensorsWriter output, bool countInput = true)
    {
        var type = tensor.Output.DType;
        var bytes = _raw.AsSpan(0, n * type.Size());
        MergeKernels.Finish(acc.AsSpan(0, n), tensor.Divisor, type, bytes);
        output.Write(tensor.Output, start * type.Size(), bytes);
        BytesWritten += bytes.Length;
        _progress?.Add(0, bytes.Length, tensor.Component);
    }

    /// <summary>A tensor taken from one source: raw bytes when the dtype is unchanged, else converted with one rounding.</summary>
    private void Copy(PlannedTensor tensor, SafetensorsWriter output, CancellationToken ct)
    {
        var term = tensor.Terms[0];
        var from = term.Tensor.DType;
        var to = tensor.Output.DType;
        for (long start = 0; start < tensor.ElementCount; start += _chunk)
        {
            ct.ThrowIfCancellationRequested();
            int n = (int)Math.Min(_chunk, tensor.ElementCount - start);
            var raw = _raw.AsSpan(0, n * from.Size());
            _inputs.Read(term, start * from.Size(), raw);
            BytesRead += raw.Length;
            BytesWritten += (long)n * to.Size();
            if (from == to)
            {
                output.Write(tensor.Output, start * to.Size(), raw);
            }
            else
            {
                var values = _groups[0].AsSpan(0, n);
                DTypeConvert.ToFloat64(from, raw, values);
                var bytes = MemoryMarshal.AsBytes(_scratch.AsSpan(0, n))[..(n * to.Size())];
                DTypeConvert.FromFloat64(values, to, bytes);
                output.Write(tensor.Output, start * to.Size(), bytes);
            }
            _progress?.Add(raw.Length, (long)n * to.Size(), tensor.Component);
        }
    }

    private void ReadDoubles(Stream stream, Span<double> destination)
    {
        stream.ReadExactly(MemoryMarshal.AsBytes(destination));
        BytesRead += destination.Length * sizeof(double);
    }
}
