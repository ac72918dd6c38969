using System.Collections.Concurrent;
using System.Diagnostics;
using MergeCluster.Engine.Telemetry;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Engine.Execution;

/// <summary>Bytes a task read (models, partial sums) and wrote (partial sums, output).</summary>
public readonly record struct TaskBytes(long Read, long Written);

/// <summary>
/// What one machine keeps open to run a job's tasks: its inputs mapped, the temporary output open for positional
/// writes, and an executor per thread. Thread-safe; dispose it when the machine has no more tasks of the job.
/// </summary>
public sealed class JobRun : IShardedRun
{
    private readonly MergeJob _job;
    private readonly MergeProgress? _progress;
    private readonly InputSet _inputs;
    private readonly SafetensorsWriter _output;
    private readonly ConcurrentBag<ShardExecutor> _idle = new();
    // Output tensors with NaN or infinite values this run's tasks found, by plan index.
    private readonly ConcurrentDictionary<int, PlannedTensor> _nonFinite = new();

    internal JobRun(MergeJob job, MergeProgress? progress)
    {
        _job = job;
        _progress = progress;
        _inputs = new InputSet(job.Plan, job.Hashes);
        try
        {
            _output = SafetensorsWriter.OpenExisting(job.Plan.OutputPath, job.Files.TempOutput, job.Files.TempIdentity, job.Plan.Layout);
        }
        catch
        {
            _inputs.Dispose();
            throw;
        }
    }

    public MergeJob Job => _job;
    IShardedJob IShardedRun.Job => _job;

    /// <summary>
    /// Runs one task on the calling thread. Partial sums are written to a file of this run's own and committed by
    /// rename, so a dead attempt's bytes never reach a reader; the output's bytes are flushed by <see cref="Flush"/>.
    /// </summary>
    public TaskBytes Run(MergeTask task, int attempt, CancellationToken ct)
    {
        var plan = _job.Plan;
        var shard = plan.Shards[task.Shard];
        var executor = _idle.TryTake(out var e) ? e
            : new ShardExecutor(plan, _inputs, _progress) { NonFinite = _job.Options.NonFinite == NonFinitePolicy.Keep ? null : t => _nonFinite[t.Index] = t };
        long read0 = executor.BytesRead, written0 = executor.BytesWritten;
        var span = Activity.Current;
        span?.SetTag(MergeTelemetry.ShardTag, shard.Index);
        span?.SetTag(MergeTelemetry.ModelsTag, _job.ModelNamesOf(task));
        try
        {
            switch (task.Kind)
            {
                case TaskKinds.Fused:
                    executor.RunFused(shard, _output, ct);
                    break;
                case TaskKinds.Leaf:
                    WritePartial(shard, new PartialNode(0, task.Node), attempt, s => executor.RunLeaf(shard, task.Node, s, ct));
                    break;
                case TaskKinds.Reduce:
                    {
                        var node = new PartialNode(task.Level, task.Node);
                        var (left, right) = new ShardTree(plan, shard).Children(node);
                        using var l = OpenPartial(shard, left);
                        using var r = OpenPartial(shard, right);
                        WritePartial(shard, node, attempt, s => executor.RunReduce(shard, node, left, right, l, r, s, ct));
                        break;
                    }
                case TaskKinds.Final:
                    {
                        var root = new ShardTree(plan, shard).Root;
                        using var data = root is null ? null : OpenPartial(shard, root);
                        executor.RunFinal(shard, root, data, _output, ct);
                        break;
                    }
                default:
                    throw new Merge.MergeException($"unknown task kind '{task.Kind}'");
            }
            if (task.WritesOutput) RefuseNonFinite(shard);
        }
        finally
        {
            long read = executor.BytesRead - read0, written = executor.BytesWritten - written0;
            span?.SetTag(MergeTelemetry.BytesReadTag, read);
            span?.SetTag(MergeTelemetry.BytesWrittenTag, written);
            MergeTelemetry.BytesRead.Add(read);
            MergeTelemetry.BytesWritten.Add(written);
            _idle.Add(executor);
        }
        return new TaskBytes(executor.BytesRead - read0, executor.BytesWritten - written0);
    }

    public void Flush(MergeTask task)
    {
        if (task.WritesOutput) _output.Flush();
    }

    /// <summary>
    /// Records the shard's non-finite tensors on the task's span, and under <see cref="NonFinitePolicy.Error"/> fails
    /// the task (permanently: the inputs will not change), so the job writes nothing.
    /// </summary>
    private void RefuseNonFinite(Shard shard)
    {
        if (_nonFinite.IsEmpty) return;
        var found = shard.TensorIndices.Where(_nonFinite.ContainsKey).Select(i => _job.Plan.Tensors[i]).ToList();
        foreach (var t in found)
            Activity.Current?.AddEvent(new ActivityEvent("mergecluster.nonfinite", tags: new ActivityTagsCollection { ["mergecluster.key"] = t.Output.Key }));
        if (found.Count == 0 || _job.Options.NonFinite != NonFinitePolicy.Error) return;
        var first = Describe(found[0]);
        throw new Merge.MergeException($"{_job.Plan.OutputPath}: tensor '{first.Key}': the merged values include NaN or infinity ({first.Cause})"
            + (found.Count > 1 ? $", and {found.Count - 1} more tensors of this shard do" : "") + "; --nonfinite error writes nothing (warn or keep would write the file)");
    }

    /// <summary>
    /// The output tensors with NaN or infinite values that this run's tasks found, in plan order, each with the models
    /// whose tensor holds such values: the inputs are looked at only now, and only for those tensors.
    /// </summary>
    public IReadOnlyList<NonFiniteTensor> NonFinite() => [.. _nonFinite.Values.OrderBy(t => t.Index).Select(Describe)];

    private NonFiniteTensor Describe(PlannedTensor tensor)
    {
        const int window = 4 << 20;
        var names = new List<string>();
        foreach (var term in tensor.Terms)
        {
            string name = _job.Plan.Inputs[term.Input].Name;
            if (names.Contains(name) || !term.Tensor.DType.IsFloat()) continue;
            for (long offset = 0; offset < term.Tensor.ByteLength; offset += window)
            {
                int length = (int)Math.Min(window, term.Tensor.ByteLength - offset);
                long bad = DTypeConvert.CountNonFinite(term.Tensor.DType, _inputs.Window(term, offset, length));
                _inputs.Release(term, offset, length);
                if (bad == 0) continue;
                names.Add(name);
                break;
            }
        }
        return new NonFiniteTensor(tensor.Output.Key, names, tensor.Output.DType);
    }

    private void WritePartial(Shard shard, PartialNode node, int attempt, Action<Stream> produce)
    {
        using var span = MergeTelemetry.Source.StartActivity("mergecluster.write.partial");
        span?.SetTag(MergeTelemetry.ShardTag, shard.Index);
        span?.SetTag("mergecluster.partial", node.Name(shard));
        ScratchFile.Write(_job.PartialPath(shard, node), attempt, produce);
    }

    private FileStream OpenPartial(Shard shard, PartialNode node)
    {
        string path = _job.PartialPath(shard, node);
        Activity.Current?.AddEvent(new ActivityEvent("mergecluster.read.partial", tags: new ActivityTagsCollection { ["mergecluster.partial"] = node.Name(shard) }));
        try { return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan); }
        catch (FileNotFoundException e)
        {
            throw new PartialSumMissingException(path, shard.Index, node, e);
        }
    }

    public void Dispose()
    {
        _output.Dispose();
        _inputs.Dispose();
    }
}

/// <summary>
/// A partial sum a reduce or final task needs is not there (scratch lost, or storage forgot that its consumer was
/// done and the task ran again after the file was deleted): the task that produces it must run again first.
/// </summary>
public sealed class PartialSumMissingException(string path, int shard, PartialNode node, Exception inner)
    : IOException($"{path}: partial sum missing (the task that makes it runs again)", inner)
{
    public int Shard { get; } = shard;
    public PartialNode Node { get; } = node;
}
