using System.Runtime.InteropServices;
using MergeCluster.Planning;
using MergeCluster.Merge.Methods;
using MergeCluster.Merge.Numerics;
using MergeCluster.Safetensors;

namespace MergeCluster.Engine.Execution;

/// <summary>
/// Executes shards of a plan with one set of buffers (one instance per worker thread). Every operation is
/// elementwise, so chunk and block sizes and the thread count never change a bit of the output.
/// </summary>
/// <remarks>
/// Two levels of tiling. A chunk is one mapped window per source (two madvise calls each, no copy); within a chunk
/// the arithmetic runs block by block, so a block's accumulators (one per reduction group) stay in L1/L2 while every
/// source is added into them, the tree reduces them and the result is rounded. Resident memory per executor is
/// about chunk × (bytes per element of all sources of a tensor), capped by <see cref="WindowBudgetBytes"/>, plus
/// groups × block doubles: independent of file sizes.
/// </remarks>
public sealed unsafe class ShardExecutor
{
    /// <summary>
    /// Elements per chunk: each source is mapped in windows of this many elements, 2 MiB of f16, the page cache's
    /// largest folio, so each folio is populated and released once (512 KiB windows took 6 % longer, with four times
    /// the madvise calls and direct writes; docs/performance.md).
    /// </summary>
    public const int DefaultChunkElements = 1 << 20;
    /// <summary>Elements per block: 32 KiB of float64 accumulator per group, which fits L1 with its sources' slices.</summary>
    public const int BlockElements = 1 << 12;
    /// <summary>Cap on the windows mapped at once; with many sources the chunk shrinks (to one block at least) to stay under it.</summary>
    public const int WindowBudgetBytes = 32 << 20;

    private readonly MergePlan _plan;
    private readonly InputSet _inputs;
    private readonly MergeProgress? _progress;
    private readonly int _chunk;
    private readonly int _block;
    private readonly nint[] _window;
    private readonly nint[] _sources;
    private readonly double[] _coefficients;
    private readonly OutputBuffer _out;
    private readonly double[][] _groups;
    private readonly bool[] _present;
    private readonly ProgramRunner _programs = new();
    private readonly OutputTarget[] _single = new OutputTarget[1];

    /// <summary>Bytes this executor read from models and partials since it was created (for task telemetry).</summary>
    public long BytesRead { get; private set; }
    /// <summary>Bytes this executor wrote to the output and partials.</summary>
    public long BytesWritten { get; private set; }

    /// <summary>
    /// Told of each output tensor with a NaN or infinite value (one from an input, or an overflow when rounding),
    /// found on the float64 results while they are in cache; null skips the check.
    /// </summary>
    public Action<PlannedTensor>? NonFinite { get; init; }

    public ShardExecutor(MergePlan plan, InputSet inputs, MergeProgress? progress = null, int chunkElements = DefaultChunkElements)
        : this([plan], inputs, progress, chunkElements) { }

    /// <summary>
    /// An executor for the tensors of several plans with the same inputs and reduction groups (a sweep's candidates):
    /// buffers are sized for the widest tensor of any of them, and <see cref="RunTensor"/> takes a tensor of any.
    /// </summary>
    public ShardExecutor(IReadOnlyList<MergePlan> plans, InputSet inputs, MergeProgress? progress = null, int chunkElements = DefaultChunkElements)
    {
        var plan = plans[0];
        _plan = plan;
        _inputs = inputs;
        _progress = progress;
        // Widest tensor in bytes per element over all its sources: one window of each is mapped at a time.
        int rawPerElement = sizeof(double), maxTerms = 1;
        foreach (var t in plans.SelectMany(p => p.Tensors))
        {
            int sum = 0;
            foreach (var term in t.Terms) sum += term.Tensor.DType.Size();
            rawPerElement = Math.Max(rawPerElement, sum);
            maxTerms = Math.Max(maxTerms, t.Terms.Length);
        }
        _block = Math.Max(1, Math.Min(BlockElements, chunkElements));
        int chunk = Math.Min(chunkElements, Math.Max(_block, WindowBudgetBytes / rawPerElement));
        _chunk = Math.Max(_block, chunk / _block * _block);
        _window = new nint[maxTerms];
        _sources = new nint[maxTerms];
        _coefficients = new double[maxTerms];
        _out = new OutputBuffer(_chunk * sizeof(double));
        _groups = new double[Math.Max(plan.GroupCount, 2)][];
        for (int g = 0; g < _groups.Length; g++) _groups[g] = new double[_block];
        _present = new bool[_groups.Length];
    }

    /// <summary>Runs a whole shard in memory, the reduction tree included, writing its tensors into the output.</summary>
    public void RunFused(Shard shard, SafetensorsWriter output, CancellationToken ct)
    {
        try
        {
            foreach (int index in shard.TensorIndices)
            {
                var tensor = _plan.Tensors[index];
                _single[0] = new OutputTarget(output, tensor.Output);
                RunTensor(tensor, _single, ct);
            }
        }
        catch
        {
            DrainOutput(observe: false);
            throw;
        }
        DrainOutput();
        Writeback.Start(output, shard, _plan);
    }

    /// <summary>
    /// One whole tensor, the reduction tree included, its bytes written to every target (a sweep's candidates that
    /// share it): computed once, whatever the number of targets.
    /// </summary>
    public void RunTensor(PlannedTensor tensor, OutputTarget[] targets, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        if (tensor.Op == TensorOp.Copy)
        {
            Copy(tensor, targets, ct);
            return;
        }
        if (tensor.Op == TensorOp.Method)
        {
            RunProgram(tensor, targets, ct);
            return;
        }
        int outSize = tensor.Output.DType.Size();
        bool finite = true;
        for (long start = 0; start < tensor.ElementCount; start += _chunk)
        {
            int n = (int)Math.Min(_chunk, tensor.ElementCount - start);
            MapTerms(tensor, -1, start, n);
            PlaceOutput(targets, start, n * outSize);
            for (int b = 0; b < n; b += _block)
            {
                int m = Math.Min(_block, n - b);
                for (int g = 0; g < _plan.GroupCount; g++) _present[g] = SumGroup(tensor, g, b, m);
                if (!ReductionTree.Reduce(_present, _groups, _plan.GroupCount, m))
                    throw new InvalidOperationException($"tensor '{tensor.Output.Key}' has no terms");
                var encoded = _out.Chunk(b * outSize, m * outSize);
                MergeKernels.Finish(_groups[0].AsSpan(0, m), tensor.Divisor, tensor.Output.DType, encoded);
                finite = finite && Finite(_groups[0].AsSpan(0, m), tensor.Output.DType, encoded);
            }
            ReleaseTerms(tensor, -1, start, n);
            WriteOutput(tensor, start, n, targets);
        }
        if (!finite) NonFinite!(tensor);
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
                MapTerms(tensor, group, start, n);
                for (int b = 0; b < n; b += _block)
                {
                    int m = Math.Min(_block, n - b);
                    SumGroup(tensor, group, b, m);
                    partial.Write(MemoryMarshal.AsBytes(_groups[group].AsSpan(0, m)));
                }
                ReleaseTerms(tensor, group, start, n);
                BytesWritten += (long)n * sizeof(double);
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
            for (long start = 0; start < tensor.ElementCount; start += _block)
            {
                ct.ThrowIfCancellationRequested();
                int n = (int)Math.Min(_block, tensor.ElementCount - start);
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
        try
        {
            RunFinalTensors(shard, root, rootData, output, ct);
        }
        catch
        {
            DrainOutput(observe: false);
            throw;
        }
        DrainOutput();
    }

    private void RunFinalTensors(Shard shard, PartialNode? root, Stream? rootData, SafetensorsWriter output, CancellationToken ct)
    {
        foreach (int index in shard.TensorIndices)
        {
            ct.ThrowIfCancellationRequested();
            var tensor = _plan.Tensors[index];
            _single[0] = new OutputTarget(output, tensor.Output);
            if (tensor.Op is TensorOp.Copy or TensorOp.Method)
            {
                // A method tensor needs all of its terms at once, so the final task computes it from the inputs.
                RunTensor(tensor, _single, ct);
                continue;
            }
            if (root is null || rootData is null || !root.Has(tensor))
                throw new InvalidOperationException($"root partial lacks '{tensor.Output.Key}'");
            int outSize = tensor.Output.DType.Size();
            bool finite = true;
            for (long start = 0; start < tensor.ElementCount; start += _chunk)
            {
                int n = (int)Math.Min(_chunk, tensor.ElementCount - start);
                PlaceOutput(_single, start, n * outSize);
                for (int b = 0; b < n; b += _block)
                {
                    int m = Math.Min(_block, n - b);
                    ReadDoubles(rootData, _groups[0].AsSpan(0, m));
                    var encoded = _out.Chunk(b * outSize, m * outSize);
                    MergeKernels.Finish(_groups[0].AsSpan(0, m), tensor.Divisor, tensor.Output.DType, encoded);
                    finite = finite && Finite(_groups[0].AsSpan(0, m), tensor.Output.DType, encoded);
                }
                WriteOutput(tensor, start, n, _single);
            }
            if (!finite) NonFinite!(tensor);
        }
    }

    /// <summary>
    /// A non-linear tensor: its program's statistics passes, then the output pass, each streaming the terms' windows
    /// chunk by chunk (progress counts the output pass, so a bar still ends at the plan's input bytes).
    /// </summary>
    private void RunProgram(PlannedTensor tensor, OutputTarget[] targets, CancellationToken ct)
    {
        var context = new TensorContext(tensor.Output.Key, tensor.Output.Shape, tensor.Terms.Length);
        var io = new ProgramIo(this, tensor, targets);
        _programs.Run(tensor.Program!, context, _chunk, io, io, ct);
        if (!io.Finite) NonFinite!(tensor);
    }

    /// <summary>The executor's windows as a program's source and its output buffer as the sink.</summary>
    private sealed class ProgramIo(ShardExecutor executor, PlannedTensor tensor, OutputTarget[] targets) : ITensorSource, ITensorSink
    {
        private readonly int _outSize = tensor.Output.DType.Size();

        public void Map(long start, int count)
        {
            // Blocks of whole rows longer than the executor's chunk make a chunk of one row: the buffer grows to it.
            executor.PlaceOutput(targets, start, count * _outSize);
            executor.MapTerms(tensor, -1, start, count, progress: false);
        }

        public void Decode(int leaf, int offset, Span<double> destination)
        {
            var term = tensor.Terms[leaf];
            int size = term.Tensor.DType.Size();
            DTypeConvert.ToFloat64(term.Tensor.DType, new ReadOnlySpan<byte>((byte*)executor._window[leaf] + (long)offset * size, destination.Length * size), destination);
        }

        public void Release(long start, int count) => executor.ReleaseTerms(tensor, -1, start, count);

        /// <summary>False once a written value is NaN or infinite, or overflows the output dtype (checked only when someone asked).</summary>
        public bool Finite { get; private set; } = true;

        public void Write(int offset, ReadOnlySpan<double> values)
        {
            var encoded = executor._out.Chunk(offset * _outSize, values.Length * _outSize);
            DTypeConvert.FromFloat64(values, tensor.Output.DType, encoded);
            Finite = Finite && executor.Finite(values, tensor.Output.DType, encoded);
        }

        public void Flush(long start, int count)
        {
            long bytes = 0;
            foreach (var term in tensor.Terms) bytes += (long)count * term.Tensor.DType.Size();
            executor._progress?.Add(bytes, 0, tensor.Component);
            executor.WriteOutput(tensor, start, count, targets);
        }
    }

    /// <summary>Maps elements [start, start+n) of every term in <paramref name="group"/> (all terms when -1) into <see cref="_window"/>.</summary>
    private void MapTerms(PlannedTensor tensor, int group, long start, int n, bool progress = true)
    {
        long bytes = 0;
        for (int t = 0; t < tensor.Terms.Length; t++)
        {
            var term = tensor.Terms[t];
            if (group >= 0 && term.Group != group) continue;
            int size = term.Tensor.DType.Size();
            fixed (byte* p = _inputs.Window(term, start * size, n * size)) _window[t] = (nint)p;
            bytes += n * size;
        }
        BytesRead += bytes;
        if (progress) _progress?.Add(bytes, 0, tensor.Component);
    }

    private void ReleaseTerms(PlannedTensor tensor, int group, long start, int n)
    {
        for (int t = 0; t < tensor.Terms.Length; t++)
        {
            var term = tensor.Terms[t];
            if (group >= 0 && term.Group != group) continue;
            int size = term.Tensor.DType.Size();
            _inputs.Release(term, start * size, n * size);
        }
    }

    /// <summary>
    /// Σ coefficient·source over the terms of one group for block elements [b, b+m) of the chunk's windows,
    /// into the group's accumulator; terms in plan order, from +0.0. False when the group has no terms.
    /// </summary>
    private bool SumGroup(PlannedTensor tensor, int group, int b, int m)
    {
        var acc = _groups[group].AsSpan(0, m);
        int count = 0;
        DType? shared = null;
        for (int t = 0; t < tensor.Terms.Length; t++)
        {
            var term = tensor.Terms[t];
            if (term.Group != group) continue;
            shared = count == 0 || shared == term.Tensor.DType ? term.Tensor.DType : null;
            _sources[count] = (nint)((byte*)_window[t] + (long)b * term.Tensor.DType.Size());
            _coefficients[count++] = term.Coefficient;
        }
        if (count == 0) return false;
        if (shared is { } type)
        {
            MergeKernels.Sum(type, _sources.AsSpan(0, count), _coefficients.AsSpan(0, count), acc);
            return true;
        }
        // Mixed dtypes (an f32 model among f16 ones): term by term.
        acc.Clear();
        for (int t = 0, k = 0; t < tensor.Terms.Length; t++)
        {
            var term = tensor.Terms[t];
            if (term.Group != group) continue;
            int size = term.Tensor.DType.Size();
            MergeKernels.Accumulate(term.Tensor.DType, new ReadOnlySpan<byte>((byte*)_sources[k++], m * size), term.Coefficient, acc);
        }
        return true;
    }

    /// <summary>Places the output buffer for the next chunk, <paramref name="bytes"/> from element <paramref name="start"/>, as the first target's file lays them out.</summary>
    private Span<byte> PlaceOutput(OutputTarget[] targets, long start, int bytes) => _out.Place(targets[0].FileOffset(start), bytes);

    /// <summary>
    /// Writes the chunk's finished output bytes (elements [start, start+n)) with one positional write per target; the
    /// first target's, for which the chunk was placed, may leave its direct pages in flight (see <see cref="DrainOutput"/>).
    /// </summary>
    private void WriteOutput(PlannedTensor tensor, long start, int n, OutputTarget[] targets)
    {
        int size = tensor.Output.DType.Size();
        OutputTarget.WriteAll(_out, targets, start * size, n * size);
        BytesWritten += (long)n * size * targets.Length;
        _progress?.Add(0, (long)n * size * targets.Length, tensor.Component);
    }

    /// <summary>
    /// Waits for this executor's output writes still in flight, before anyone counts the bytes as written (a flush, a
    /// commit, a task reported done); after a failure of the caller's own (<paramref name="observe"/> false) it only waits.
    /// </summary>
    public void DrainOutput(bool observe = true) => _out.Drain(observe);

    /// <summary>A tensor taken from one source: raw bytes when the dtype is unchanged, else converted with one rounding.</summary>
    private void Copy(PlannedTensor tensor, OutputTarget[] targets, CancellationToken ct)
    {
        var term = tensor.Terms[0];
        var from = term.Tensor.DType;
        var to = tensor.Output.DType;
        bool finite = true;
        for (long start = 0; start < tensor.ElementCount; start += _chunk)
        {
            ct.ThrowIfCancellationRequested();
            int n = (int)Math.Min(_chunk, tensor.ElementCount - start);
            var raw = _inputs.Window(term, start * from.Size(), n * from.Size());
            BytesRead += raw.Length;
            BytesWritten += (long)n * to.Size() * targets.Length;
            var output = PlaceOutput(targets, start, n * to.Size());
            if (from == to)
            {
                // Through the placed buffer, so the writer can send its pages directly: a copy in memory costs far
                // less than one through the page cache.
                raw.CopyTo(output);
                OutputTarget.WriteAll(_out, targets, start * to.Size(), output.Length);
                finite = finite && (NonFinite is null || !to.IsFloat() || DTypeConvert.CountNonFinite(to, raw) == 0);
            }
            else
            {
                for (int b = 0; b < n; b += _block)
                {
                    int m = Math.Min(_block, n - b);
                    var values = _groups[0].AsSpan(0, m);
                    DTypeConvert.ToFloat64(from, raw.Slice(b * from.Size(), m * from.Size()), values);
                    var encoded = output.Slice(b * to.Size(), m * to.Size());
                    DTypeConvert.FromFloat64(values, to, encoded);
                    finite = finite && Finite(values, to, encoded);
                }
                OutputTarget.WriteAll(_out, targets, start * to.Size(), output.Length);
            }
            _inputs.Release(term, start * from.Size(), raw.Length);
            _progress?.Add(raw.Length, (long)n * to.Size() * targets.Length, tensor.Component);
        }
        if (!finite) NonFinite!(tensor);
    }

    /// <summary>Whether a block of results, encoded as <paramref name="encoded"/>, rounds to finite values; always true when nobody asked (<see cref="NonFinite"/> is null).</summary>
    private bool Finite(ReadOnlySpan<double> results, DType output, ReadOnlySpan<byte> encoded) =>
        NonFinite is null || DTypeConvert.EncodedFinite(results, output, encoded);

    private void ReadDoubles(Stream stream, Span<double> destination)
    {
        stream.ReadExactly(MemoryMarshal.AsBytes(destination));
        BytesRead += destination.Length * sizeof(double);
    }
}

/// <summary>Where a tensor's bytes go: a writer, and the tensor as that writer's layout places it.</summary>
public readonly record struct OutputTarget(SafetensorsWriter Writer, TensorInfo Tensor)
{
    /// <summary>Where element <paramref name="element"/> of the tensor lies in the writer's file.</summary>
    public long FileOffset(long element) => Writer.Layout.FileOffset(Tensor) + element * Tensor.DType.Size();

    /// <summary>
    /// The first <paramref name="bytes"/> of the chunk placed last in <paramref name="buffer"/> (placed for the first
    /// target) to every target: the first target's direct pages left in flight, the others' written at once.
    /// </summary>
    public static void WriteAll(OutputBuffer buffer, OutputTarget[] targets, long offsetInTensor, int bytes)
    {
        buffer.WriteBehind(targets[0].Writer, targets[0].Tensor, offsetInTensor, bytes);
        for (int i = 1; i < targets.Length; i++) targets[i].Writer.Write(targets[i].Tensor, offsetInTensor, buffer.Chunk(0, bytes));
    }
}

/// <summary>
/// Starts the disk writes of a finished shard's output bytes without waiting for them (Linux sync_file_range with
/// SYNC_FILE_RANGE_WRITE), so the output streams to disk while later shards compute instead of piling up for the
/// final fsync. A hint only: durability still comes from the commit's fsync, and failures are ignored.
/// </summary>
internal static partial class Writeback
{
    private const uint SyncFileRangeWrite = 2;

    [LibraryImport("libc", EntryPoint = "sync_file_range")]
    private static partial int SyncFileRange(SafeHandle fd, long offset, long count, uint flags);

    public static void Start(SafetensorsWriter output, Shard shard, MergePlan plan)
    {
        if (!OperatingSystem.IsLinux() || shard.TensorCount == 0) return;
        long begin = long.MaxValue, end = 0;
        for (int i = shard.FirstTensor; i < shard.FirstTensor + shard.TensorCount; i++)
        {
            var t = plan.Tensors[i].Output;
            begin = Math.Min(begin, output.Layout.FileOffset(t));
            end = Math.Max(end, output.Layout.FileOffset(t) + t.ByteLength);
        }
        try { SyncFileRange(output.Handle, begin, end - begin, SyncFileRangeWrite); }
        catch (Exception e) when (e is ObjectDisposedException or EntryPointNotFoundException or DllNotFoundException) { }
    }
}
