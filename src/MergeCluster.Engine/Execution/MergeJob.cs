using System.Collections.Immutable;
using System.Security.Cryptography;
using MergeCluster.Merge;
using MergeCluster.Merge.Recipes;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Engine.Execution;

/// <summary>How a job's shards are cut into tasks.</summary>
public enum TaskShape
{
    /// <summary>One task per shard, the reduction tree in memory: the embedded default.</summary>
    Fused,
    /// <summary>Leaf tasks per reduction group, pairwise reduce tasks and a final task per shard: the cluster.</summary>
    Tree,
    /// <summary>
    /// Tree when no silo holds every model of the job (a shard's groups must then be summed where their models are),
    /// else fused: with shared storage the float64 partials of a tree are pure overhead, 4 bytes written and read back
    /// per input byte of f16. Both give the same bits.
    /// </summary>
    Auto,
}

/// <summary>What a merge does with an output tensor that holds NaN or an infinity.</summary>
public enum NonFinitePolicy
{
    /// <summary>Write the file and name the tensors and the inputs they came from.</summary>
    Warn,
    /// <summary>Fail the merge: no output is written and an existing one stays as it was.</summary>
    Error,
    /// <summary>Write the file without checking.</summary>
    Keep,
}

/// <summary>An output tensor with NaN or infinite values, and the models whose tensor holds such values; none means the merge itself overflowed.</summary>
public sealed record NonFiniteTensor(string Key, IReadOnlyList<string> Inputs, DType Output)
{
    /// <summary>Where the values came from, for messages.</summary>
    public string Cause => Inputs.Count == 0
        ? $"no input holds such values there: the result overflowed {Output.Name()}"
        : $"model{(Inputs.Count > 1 ? "s" : "")} {string.Join(", ", Inputs.Select(i => $"'{i}'"))} hold{(Inputs.Count > 1 ? "" : "s")} such values there";
}

/// <summary>When an embedded merge hashes the inputs its hash cache lacks.</summary>
/// <remarks>
/// First is the default because it measured faster on every run here, inputs larger than memory included (2 cores,
/// where the merge is CPU-bound and a second read costs the disk rather than the CPU); along saves the second read
/// where the disk is the bottleneck. docs/performance.md has the figures.
/// </remarks>
public enum InputHashing
{
    /// <summary>In a pass before the merge, which also brings the inputs into the page cache for it.</summary>
    First,
    /// <summary>From the merge's own reads (<see cref="HashFollower"/>), so that each input is read once.</summary>
    Along,
}

/// <summary>Per-job settings that do not change the output's bits.</summary>
public sealed record MergeJobOptions
{
    public TaskShape Shape { get; init; } = TaskShape.Auto;
    public long ShardBytes { get; init; } = 256L << 20;
    /// <summary>Absolute output path overriding the recipe's (a replay, or `merge -o`).</summary>
    public string? Output { get; init; }
    /// <summary>Record input hashes in the output metadata (needed for replay checks).</summary>
    public bool HashInputs { get; init; } = true;
    /// <summary>When an embedded job hashes its inputs; a cluster job always hashes first.</summary>
    public InputHashing Hashing { get; init; } = InputHashing.First;
    /// <summary>Output dtype overriding the recipe's (f16, bf16, f32, f64); a `.mecha` recipe names none.</summary>
    public string? DType { get; init; }
    public NonFinitePolicy NonFinite { get; init; } = NonFinitePolicy.Warn;
}

/// <summary>Where a job's files go and how its paths are opened on this machine.</summary>
/// <param name="Resolve">Maps an absolute path from a recipe to the path to open; a silo confines it to its data roots.</param>
/// <param name="Threads">Threads for hashing inputs while planning.</param>
public sealed record JobEnvironment(Func<string, string>? Resolve = null, int Threads = 1);

/// <summary>
/// The files a planned job owns: the preallocated temporary output (created exclusively, under an unpredictable name,
/// beside the output; see <see cref="OutputTemp"/>) with its identity, and, for a tree, the scratch directory of its
/// partial sums. Job state, never derived from an id: whoever schedules the job persists it and hands it to every
/// machine that runs a task, assembles or cleans up, and they open the temporary output only while it is still the file
/// <see cref="TempIdentity"/> names, never through a link.
/// </summary>
public sealed record MergeJobFiles(string TempOutput, string? Scratch, FileIdentity TempIdentity);

/// <summary>The task kinds; new merge methods that cannot be summed in a tree run as <see cref="Fused"/> tasks.</summary>
public static class TaskKinds
{
    public const string Fused = "fused", Leaf = "leaf", Reduce = "reduce", Final = "final";
    /// <summary>A distance map's shard (its partial statistics) and a sweep's shard (written into every candidate).</summary>
    public const string Distance = "distance", Sweep = "sweep";
}

/// <summary>
/// One unit of a job: a whole shard (fused), or one node of a shard's reduction tree (leaf, reduce) or its root
/// (final). <see cref="Inputs"/> are the plan's inputs it reads, for placing it near them.
/// </summary>
public sealed record MergeTask(int Index, string Name, string Kind, int Shard, int Level, int Node, ImmutableArray<int> DependsOn, long Bytes, ImmutableArray<int> Inputs)
{
    /// <summary>Whether the task writes into the output file (the rest write partial sums).</summary>
    public bool WritesOutput => Kind is TaskKinds.Fused or TaskKinds.Final;
}

/// <summary>
/// A merge as a job of tasks, independent of who schedules them: plan (checking every input header first) and
/// preallocate the output, give the tasks, run one (<see cref="OpenRun"/>), release what a done task consumed,
/// assemble (verify, fsync, rename) or clean up. The embedded <c>merge</c> runs the tasks on its threads, the
/// cluster's job grain on shard grains; both give the same file bit for bit.
/// </summary>
public sealed class MergeJob : IShardedJob
{
    // The embedded merge's temporary output, kept open and locked by this process from creation to rename, so that a
    // later run sweeping the directory knows it for a live run's. A cluster job's file is closed at once: it outlives this process.
    private SafetensorsWriter? _created;
    private int _threads = 1;

    private MergeJob(MergePlan plan, MergeJobOptions options, TaskShape shape, MergeJobFiles files)
    {
        Plan = plan;
        Options = options;
        Shape = shape;
        Files = files;
        Tasks = TasksFor(plan, shape);
        Digest = DigestOf(plan, shape);
    }

    /// <summary>The plan; an embedded job's header holds placeholder hashes until <see cref="Assemble"/> (see <see cref="HashFollower"/>).</summary>
    public MergePlan Plan { get; private set; }
    public MergeJobOptions Options { get; }
    /// <summary>The resolved shape (never <see cref="TaskShape.Auto"/>).</summary>
    public TaskShape Shape { get; }
    public MergeJobFiles Files { get; }
    public IReadOnlyList<MergeTask> Tasks { get; }

    public string Kind => "merge";
    public string OutputPath => Plan.OutputPath;
    public long InputBytes => Plan.InputBytes;
    public ImmutableArray<OwnedTemp> Temps => [new(Files.TempOutput, Files.TempIdentity)];
    public string? Scratch => Files.Scratch;
    IShardedRun IShardedJob.OpenRun(MergeProgress? progress) => OpenRun(progress);
    /// <summary>
    /// Identifies the plan (header with its input hashes, shards, tree, shape): every machine that opens the job must
    /// derive this very plan, or it would write other bytes into the shared output.
    /// </summary>
    public string Digest { get; }

    /// <summary>The embedded merge's input hashes not cached, taken from its own reads and written into the header at assembly.</summary>
    internal HashFollower? Hashes { get; private set; }

    /// <summary>
    /// Plans a job (every input header checked first; an output that is an input by file identity refused), hashes its
    /// inputs (cancellable, reported to <paramref name="progress"/>; an embedded job's follow its reads instead, see
    /// <see cref="HashFollower"/>) and preallocates its output exclusively under a
    /// random name. <paramref name="heldModels"/> are the model file names each silo holds, which decide an
    /// <see cref="TaskShape.Auto"/> shape. <paramref name="clusterJob"/>: the cluster's id of the job, whose temporary
    /// output is named after it and outlives this process; without it this process owns the job from creation to
    /// rename (the embedded merge): its temporary output stays open and locked, and stale ones of dead runs beside the
    /// output are removed first. <paramref name="known"/>: a plan the caller already made of this recipe and output
    /// (to check or print it), used instead of reading every header again.
    /// </summary>
    public static MergeJob Create(Recipe recipe, MergeJobOptions options, JobEnvironment environment, IReadOnlyList<IReadOnlyCollection<string>> heldModels,
        CancellationToken ct = default, long? clusterJob = null, MergeProgress? progress = null, MergePlan? known = null)
    {
        var planOptions = PlanOptionsFor(recipe, options, environment, null);
        var plan = known is not null && known.Recipe.Text == recipe.Text && known.Recipe.Directory == recipe.Directory
            && (planOptions.OutputPath is null || planOptions.OutputPath == known.OutputPath) && !known.Metadata.ContainsKey(MergeMetadata.Inputs)
            && (planOptions.OutputDType is null || planOptions.OutputDType == known.Recipe.Output.DType)
            ? Planner.Reshard(known, options.ShardBytes)
            : Planner.Create(recipe, planOptions);
        HashFollower? hashes = null;
        if (options.HashInputs)
        {
            var (cached, pending) = InputHashes.Lookup(plan.Inputs);
            // Only a job this process runs whole can hash along its reads: a cluster's silos check their inputs
            // against the hashes in the header before they run a task.
            if (clusterJob is null && pending.Count > 0 && options.Hashing == InputHashing.Along)
            {
                hashes = new HashFollower(plan, cached, pending, progress, ct);
                plan = Planner.WithInputHashes(plan, hashes.Placeholders, options.ShardBytes);
            }
            else plan = Planner.WithInputHashes(plan, InputHashes.Compute(cached, pending, Math.Max(1, environment.Threads), ct, progress), options.ShardBytes);
        }
        SafetensorsWriter? writer = null;
        string? scratch = null;
        try
        {
            ct.ThrowIfCancellationRequested();
            var shape = options.Shape == TaskShape.Auto ? ShapeFor(plan, heldModels) : options.Shape;
            writer = SafetensorsWriter.Create(plan.OutputPath, plan.Layout, clusterJob);
            if (shape == TaskShape.Tree)
            {
                scratch = writer.TempPath[..^".tmp".Length] + ".scratch";
                RegularFile.CreateDirectory(scratch);
            }
            var files = new MergeJobFiles(writer.TempPath, scratch, writer.TempIdentity);
            if (clusterJob is not null)
            {
                writer.Detach();
                writer = null;
            }
            return new MergeJob(plan, options, shape, files) { _created = writer, Hashes = hashes, _threads = Math.Max(1, environment.Threads) };
        }
        catch
        {
            hashes?.Dispose();
            writer?.Dispose();
            if (scratch is not null) DeleteScratch(scratch);
            throw;
        }
    }

    /// <summary>
    /// Opens a job another machine planned: the plan is derived again from the recipe and the input hashes fixed in
    /// the preallocated output's header. Throws <see cref="MergeException"/> when this machine sees other inputs.
    /// </summary>
    public static MergeJob Open(Recipe recipe, MergeJobOptions options, TaskShape shape, MergeJobFiles files, JobEnvironment environment, string? digest = null)
    {
        SafetensorsHeader header;
        long length;
        using (var handle = RegularFile.OpenOwned(files.TempOutput, files.TempIdentity, write: false))
            header = SafetensorsFile.ReadHeader(handle, files.TempOutput, out length);
        var hashes = header.Metadata.TryGetValue(MergeMetadata.Inputs, out string? json) ? MergeMetadata.ParseInputs(json, files.TempOutput) : null;
        var plan = Planner.Create(recipe, PlanOptionsFor(recipe, options, environment, hashes));
        var job = new MergeJob(plan, options, shape, files);
        if (plan.Layout.DataStart != header.DataStart || plan.Layout.TotalLength != length || (digest is not null && digest != job.Digest))
            throw new MergeException($"{files.TempOutput}: this machine's plan differs from the one the job was planned with (inputs changed since?)");
        return job;
    }

    /// <summary>Maps the inputs and opens the output for running tasks; dispose it when this machine has no more tasks of the job.</summary>
    public JobRun OpenRun(MergeProgress? progress = null) => new(this, progress);

    /// <summary>
    /// Deletes the partial sums a done task consumed (its children's). Call it only once that task's being done is
    /// durable wherever the job is tracked: a reduce that runs again needs its children's files.
    /// </summary>
    public void Release(MergeTask done)
    {
        if (Files.Scratch is null || done.Kind is not (TaskKinds.Reduce or TaskKinds.Final)) return;
        var shard = Plan.Shards[done.Shard];
        var tree = new ShardTree(Plan, shard);
        if (done.Kind == TaskKinds.Final)
        {
            if (tree.Root is { } root) TryDelete(PartialPath(shard, root));
            return;
        }
        var (left, right) = tree.Children(new PartialNode(done.Level, done.Node));
        TryDelete(PartialPath(shard, left));
        TryDelete(PartialPath(shard, right));
    }

    /// <summary>
    /// Once every task is done: verifies the temporary output (its header must be the plan's, and its data end
    /// exactly at the end of the file), fsyncs it and renames it over the output. Idempotent: a job whose output was
    /// already committed (the assembler died after the rename) is left as it is.
    /// </summary>
    public void Assemble()
    {
        string temp = Files.TempOutput;
        if (_created is { } writer)
        {
            if (Hashes is { } hashes)
            {
                Plan = Planner.WithInputHashes(Plan, hashes.Finish(_threads), Options.ShardBytes);
                writer.RewriteHeader(Plan.Layout);
            }
            Verify(writer.Handle);
            writer.Commit();
            writer.Dispose();
            _created = null;
        }
        else CommitExisting(new OwnedTemp(temp, Files.TempIdentity), Plan);
        DeleteScratch(Files.Scratch);
    }

    /// <summary>
    /// Verifies a temporary output another process filled (still the file created, its header the plan's, its data
    /// ending exactly at the end of the file) and commits it over the plan's output; a temporary output already
    /// committed there is left as it is.
    /// </summary>
    public static void CommitExisting(OwnedTemp temp, MergePlan plan)
    {
        if (RegularFile.IdentityOf(temp.Path) is not null)
        {
            using (var handle = RegularFile.OpenOwned(temp.Path, temp.Identity, write: false)) Verify(handle, temp.Path, plan);
            SafetensorsWriter.CommitExisting(temp.Path, temp.Identity, plan.OutputPath);
        }
        else if (RegularFile.IdentityOf(plan.OutputPath) != temp.Identity)
            throw new MergeException($"{plan.OutputPath}: the job's temporary output {temp.Path} is gone");
    }

    private void Verify(Microsoft.Win32.SafeHandles.SafeFileHandle temp) => Verify(temp, Files.TempOutput, Plan);

    private static void Verify(Microsoft.Win32.SafeHandles.SafeFileHandle temp, string path, MergePlan plan)
    {
        var header = SafetensorsFile.ReadHeader(temp, path, out long length);
        if (header.Tensors.Length != plan.Tensors.Length || header.DataStart != plan.Layout.DataStart || length != plan.Layout.TotalLength)
            throw new MergeException($"{path}: assembled output does not match the plan");
    }

    /// <summary>
    /// Removes a failed or cancelled job's temporary output (only while it is still the file the plan created) and
    /// scratch; what is already gone is skipped.
    /// </summary>
    public static void Cleanup(MergeJobFiles files) => Cleanup([new OwnedTemp(files.TempOutput, files.TempIdentity)], files.Scratch);

    /// <summary>As above, for any job's files: each temporary output only while it is still the file created, then the scratch directory.</summary>
    public static void Cleanup(IEnumerable<OwnedTemp> temps, string? scratch)
    {
        foreach (var temp in temps)
            if (temp.Path.Length > 0) RegularFile.DeleteIfOwned(temp.Path, temp.Identity);
        DeleteScratch(scratch);
    }

    /// <summary>An embedded job's temporary output goes with it unless it was assembled; a cluster job's stays for its cleanup.</summary>
    public void Dispose()
    {
        Hashes?.Dispose();
        Hashes = null;
        _created?.Dispose();
        _created = null;
    }

    /// <summary>
    /// Whether a task's failure will happen again however often it runs: a recipe or format error. I/O errors (an
    /// input that changed since planning, a disk or network fault) may not, so they are retried.
    /// </summary>
    public static bool IsPermanent(Exception e) => e switch
    {
        SafetensorsException s => s.Error != SafetensorsError.Io,
        MergeException => true,
        _ => false,
    };

    /// <summary>The task graph: per shard either one fused task, or leaves, pairwise reduces and a final task.</summary>
    public static IReadOnlyList<MergeTask> TasksFor(MergePlan plan, TaskShape shape)
    {
        var tasks = new List<MergeTask>();
        var byNode = new Dictionary<PartialNode, int>();
        foreach (var shard in plan.Shards)
        {
            var tree = new ShardTree(plan, shard);
            if (shape != TaskShape.Tree || tree.Root is null || plan.GroupCount == 1)
            {
                // A single group needs no partial sums: the fused task computes the very same bits.
                tasks.Add(new MergeTask(tasks.Count, $"s{shard.Index:D5}/{TaskKinds.Fused}", TaskKinds.Fused, shard.Index, 0, 0, [], shard.InputBytes, InputsOf(plan, shard, null)));
                continue;
            }
            byNode.Clear();
            foreach (var node in tree.Producers())
            {
                bool leaf = node.Level == 0;
                var deps = leaf ? ImmutableArray<int>.Empty : tree.Children(node) switch { var (l, r) => [byNode[l], byNode[r]] };
                byNode[node] = tasks.Count;
                tasks.Add(new MergeTask(tasks.Count, $"s{shard.Index:D5}/l{node.Level}n{node.Index}", leaf ? TaskKinds.Leaf : TaskKinds.Reduce, shard.Index, node.Level, node.Index,
                    deps, leaf ? GroupBytes(plan, shard, node.Index) : 0, leaf ? InputsOf(plan, shard, node.Index) : []));
            }
            tasks.Add(new MergeTask(tasks.Count, $"s{shard.Index:D5}/{TaskKinds.Final}", TaskKinds.Final, shard.Index, 0, 0, [byNode[tree.Root]], shard.OutputBytes, InputsOf(plan, shard, CopiesOnly)));
        }
        return tasks;
    }

    /// <summary>What <see cref="TaskShape.Auto"/> means for this plan, given the model file names each silo holds.</summary>
    public static TaskShape ShapeFor(MergePlan plan, IReadOnlyList<IReadOnlyCollection<string>> heldModels)
    {
        var files = new HashSet<string>(StringComparer.Ordinal);
        foreach (var input in plan.Inputs)
            if (input.Length > 0) files.Add(Path.GetFileName(input.Path));
        foreach (var held in heldModels)
            if (held.Count > 0 && files.IsSubsetOf(held)) return TaskShape.Fused;
        // No silo declaring models (none scanned, or silos without data roots) also means fused: nothing to place near.
        return heldModels.Any(h => h.Count > 0) ? TaskShape.Tree : TaskShape.Fused;
    }

    /// <summary>The task that produces a partial sum (a leaf or a reduce of the shard's tree).</summary>
    public MergeTask ProducerOf(int shard, PartialNode node) =>
        Tasks.First(t => t.Shard == shard && t.Level == node.Level && t.Node == node.Index && t.Kind is TaskKinds.Leaf or TaskKinds.Reduce);

    internal string PartialPath(Shard shard, PartialNode node) =>
        Path.Combine(Files.Scratch ?? throw new InvalidOperationException("a fused job has no scratch directory"), node.Name(shard) + ".partial");

    private const int CopiesOnly = -1;

    /// <summary>The file names of the models a task reads: what silos announce they hold.</summary>
    public IEnumerable<string> FilesOf(MergeTask task) => task.Inputs.Select(i => Path.GetFileName(Plan.Inputs[i].Path));

    /// <summary>The recipe's names of the models a task reads, for its span.</summary>
    public string ModelNamesOf(MergeTask task) => string.Join(",", task.Inputs.Select(i => Plan.Inputs[i].Name));

    /// <summary>
    /// The inputs a task reads: all of the shard's (null), one reduction group's, or those of the tensors the final
    /// task copies (<see cref="CopiesOnly"/>).
    /// </summary>
    private static ImmutableArray<int> InputsOf(MergePlan plan, Shard shard, int? group)
    {
        var inputs = new SortedSet<int>();
        foreach (int i in shard.TensorIndices)
        {
            var tensor = plan.Tensors[i];
            foreach (var t in tensor.Terms)
            {
                bool reads = group switch
                {
                    null => true,
                    CopiesOnly => tensor.Op == TensorOp.Copy,
                    _ => tensor.Op == TensorOp.Combine && t.Group == group,
                };
                if (reads) inputs.Add(t.Input);
            }
        }
        return [.. inputs];
    }

    private static long GroupBytes(MergePlan plan, Shard shard, int group)
    {
        long sum = 0;
        foreach (int i in shard.TensorIndices)
            foreach (var t in plan.Tensors[i].Terms)
                if (plan.Tensors[i].Op == TensorOp.Combine && t.Group == group) sum += t.Tensor.ByteLength;
        return sum;
    }

    private static string DigestOf(MergePlan plan, TaskShape shape)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(plan.Layout.HeaderBytes);
        Span<byte> word = stackalloc byte[8];
        foreach (var shard in plan.Shards)
        {
            BitConverter.TryWriteBytes(word, ((long)shard.FirstTensor << 32) | (uint)shard.TensorCount);
            hash.AppendData(word);
        }
        BitConverter.TryWriteBytes(word, ((long)plan.GroupCount << 8) | (long)shape);
        hash.AppendData(word);
        return Convert.ToHexStringLower(hash.GetHashAndReset())[..32];
    }

    private static PlanOptions PlanOptionsFor(Recipe recipe, MergeJobOptions options, JobEnvironment environment, IReadOnlyDictionary<string, string>? hashes)
    {
        var resolve = environment.Resolve;
        return new PlanOptions
        {
            ShardBytes = options.ShardBytes,
            InputHashes = hashes,
            OutputPath = options.Output is null ? null : resolve is null ? Path.GetFullPath(options.Output) : resolve(Path.GetFullPath(options.Output)),
            ResolvePath = resolve is null ? null : p => resolve(Path.GetFullPath(Path.Combine(recipe.Directory, p))),
            OutputDType = options.DType is null ? null
                : DTypes.TryParseUser(options.DType, out var dtype) ? dtype : throw new MergeException($"{recipe.Source}: unknown output dtype '{options.DType}'"),
        };
    }

    internal static void DeleteScratch(string? dir)
    {
        if (dir is null) return;
        try
        {
            // The directory planning created, not whatever a link put in its place.
            if (new DirectoryInfo(dir) is { Exists: true, LinkTarget: null }) Directory.Delete(dir, recursive: true);
            else if (File.Exists(dir)) File.Delete(dir);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    internal static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
