using System.Collections.Immutable;
using System.Diagnostics;
using System.Numerics.Tensors;
using System.Security.Cryptography;
using System.Text;
using MergeCluster.Engine.Execution;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Numerics;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Engine.Selection;

/// <summary>
/// A distance map as a job of tasks, independent of who schedules them: one task per shard of keys, each reading its
/// keys' tensors once from every model and returning the shard's <see cref="DistanceStatistics"/>; the job's result is
/// the partials added in shard order. Locally the shards run on this process's threads (<see cref="RunAsync"/>); on the
/// cluster (<see cref="Create"/>, <see cref="Open"/>) each task writes its partial into the job's scratch directory and
/// <see cref="Assemble"/> adds them in shard order and writes the report, so both give the same bits.
/// </summary>
public sealed class DistanceJob : IShardedJob
{
    private const string ReportFile = "distances.json";

    /// <summary>A job run by this process alone (<see cref="RunAsync"/>).</summary>
    public DistanceJob(DistancePlan plan) : this(plan, null, null) { }

    private DistanceJob(DistancePlan plan, string? outputDirectory, string? scratch)
    {
        Plan = plan;
        OutputDirectory = outputDirectory;
        Scratch = scratch;
        Tasks = [.. plan.Shards.Select(s => new MergeTask(s.Index, $"s{s.Index:D5}/{TaskKinds.Distance}", TaskKinds.Distance, s.Index, 0, 0, [], s.InputBytes, InputsOf(plan, s)))];
        Digest = DigestOf(plan);
    }

    public DistancePlan Plan { get; }
    /// <summary>Where a cluster job writes distances.json, the CSVs and the plots.</summary>
    public string? OutputDirectory { get; }
    public string? Scratch { get; }
    public IReadOnlyList<MergeTask> Tasks { get; }
    public string Digest { get; }
    public string Kind => "distance";
    public TaskShape Shape => TaskShape.Fused;
    public string OutputPath => OutputDirectory ?? "";
    public long InputBytes => Plan.InputBytes;
    public ImmutableArray<OwnedTemp> Temps => [];

    /// <summary>
    /// A cluster job of the plan: its scratch directory for the shards' partials is created exclusively in
    /// <paramref name="outputDirectory"/> (made if needed) under a name of the job's and a random part.
    /// </summary>
    public static DistanceJob Create(DistancePlan plan, string outputDirectory, long clusterJob)
    {
        Directory.CreateDirectory(outputDirectory);
        string name = OutputTemp.Name(Path.Combine(outputDirectory, ReportFile), clusterJob, Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8)));
        string scratch = Path.Combine(outputDirectory, name[..^".tmp".Length] + ".scratch");
        RegularFile.CreateDirectory(scratch);
        return new DistanceJob(plan, outputDirectory, scratch);
    }

    /// <summary>A cluster job another machine planned: this machine's plan must have the recorded digest.</summary>
    public static DistanceJob Open(DistancePlan plan, string outputDirectory, string scratch, string digest)
    {
        var job = new DistanceJob(plan, outputDirectory, scratch);
        if (job.Digest != digest)
            throw new Merge.MergeException($"{outputDirectory}: this machine's distance plan differs from the one the job was planned with (models changed since?)");
        return job;
    }

    /// <summary>Maps the models for running shards on this machine; dispose it when done.</summary>
    public DistanceRun OpenRun(MergeProgress? progress = null) => new(this, progress);

    IShardedRun IShardedJob.OpenRun(MergeProgress? progress) => OpenRun(progress);

    public IEnumerable<string> FilesOf(MergeTask task) => task.Inputs.Select(i => Path.GetFileName(Plan.Models[i].Path));

    /// <summary>Partials stay until the report is written: <see cref="Assemble"/> reads them all.</summary>
    public void Release(MergeTask done) { }

    /// <summary>
    /// Adds the shards' partials in shard order, writes the report into the output directory and removes the scratch
    /// directory. Idempotent: with the partials gone and the report there, a previous assembly finished.
    /// </summary>
    public void Assemble()
    {
        string dir = OutputDirectory ?? throw new InvalidOperationException("a local distance job is assembled by RunAsync");
        if (Scratch is null || !Directory.Exists(Scratch))
        {
            if (File.Exists(Path.Combine(dir, ReportFile))) return;
            throw new Merge.MergeException($"{dir}: the job's partials ({Scratch}) are gone");
        }
        var total = new DistanceStatistics(Plan);
        foreach (var shard in Plan.Shards)
        {
            string path = PartialPath(shard);
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.SequentialScan);
            total.Add(DistanceStatistics.ReadFrom(stream, Plan, path));
        }
        DistanceReport.Create(Plan, total).WriteFiles(dir);
        MergeJob.DeleteScratch(Scratch);
    }

    /// <summary>A cluster job's files: only the scratch directory (the report is written whole by <see cref="Assemble"/>).</summary>
    public void Dispose() { }

    internal string PartialPath(DistanceShard shard) =>
        Path.Combine(Scratch ?? throw new InvalidOperationException("a local distance job has no scratch directory"), $"s{shard.Index:D5}.distance");

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

    /// <summary>The models a shard reads: those holding one of its keys with someone to be compared with.</summary>
    private static ImmutableArray<int> InputsOf(DistancePlan plan, DistanceShard shard)
    {
        var inputs = new SortedSet<int>();
        for (int k = shard.FirstKey; k < shard.FirstKey + shard.KeyCount; k++)
            foreach (var c in plan.Keys[k].Classes)
                if (c.Length > 1) inputs.UnionWith(c);
        return [.. inputs];
    }

    /// <summary>The plan as every machine must see it: models (names, sizes), components, blocks, every key's tensors and the shards.</summary>
    private static string DigestOf(DistancePlan plan)
    {
        var text = new StringBuilder();
        text.Append(plan.HasBase).Append('|').Append(plan.Architecture.Name).Append('\n');
        foreach (var m in plan.Models) text.Append(m.Name).Append('|').Append(m.Length).Append('\n');
        text.AppendJoin(',', plan.Components.Select(c => c.Name())).Append('\n').AppendJoin(',', plan.Blocks).Append('\n');
        foreach (var key in plan.Keys)
        {
            text.Append(key.Key).Append('|').Append(key.Block);
            foreach (var t in key.Tensors)
                text.Append('|').Append(t is null ? "-" : $"{t.DType}:{string.Join('x', t.Shape)}:{t.Begin}");
            text.Append('\n');
        }
        foreach (var s in plan.Shards) text.Append(s.FirstKey).Append('+').Append(s.KeyCount).Append(';');
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())))[..32];
    }
}

/// <summary>What one machine keeps open to run a distance job's shards: the models mapped, an executor per thread.</summary>
public sealed class DistanceRun : IShardedRun
{
    private readonly DistanceJob _job;
    private readonly DistancePlan _plan;
    private readonly MergeProgress? _progress;
    private readonly InputSet _inputs;
    private readonly System.Collections.Concurrent.ConcurrentBag<DistanceExecutor> _idle = new();

    internal DistanceRun(DistanceJob job, MergeProgress? progress)
    {
        _job = job;
        _plan = job.Plan;
        _progress = progress;
        _inputs = new InputSet(_plan.Models);
    }

    public IShardedJob Job => _job;

    /// <summary>Reads one shard's keys from every model that holds them and returns the shard's partial statistics; thread-safe.</summary>
    public DistanceStatistics RunShard(DistanceShard shard, CancellationToken ct)
    {
        var executor = _idle.TryTake(out var e) ? e : new DistanceExecutor(_plan, _inputs, _progress);
        try { return executor.Run(shard, ct); }
        finally { _idle.Add(executor); }
    }

    /// <summary>A cluster task: the shard's partial, written whole (fsynced, renamed) into the job's scratch directory.</summary>
    public TaskBytes Run(MergeTask task, int attempt, CancellationToken ct)
    {
        var shard = _plan.Shards[task.Shard];
        Activity.Current?.SetTag(Telemetry.MergeTelemetry.ShardTag, shard.Index);
        var partial = RunShard(shard, ct);
        long written = 0;
        ScratchFile.Write(_job.PartialPath(shard), attempt, stream =>
        {
            partial.WriteTo(stream);
            written = stream.Position;
        });
        Telemetry.MergeTelemetry.BytesRead.Add(shard.InputBytes);
        Telemetry.MergeTelemetry.BytesWritten.Add(written);
        return new TaskBytes(shard.InputBytes, written);
    }

    /// <summary>Nothing to do: a distance task writes only its partial, durable when Run returns.</summary>
    public void Flush(MergeTask task) { }

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
