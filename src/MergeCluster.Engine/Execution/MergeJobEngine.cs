using System.Collections.Concurrent;
using System.Diagnostics;
using MergeCluster.Engine.Telemetry;
using System.Text.Json;
using MergeCluster.Engine.Ledger;
using MergeCluster.Planning;
using MergeCluster.Engine.Runtime;
using MergeCluster.Merge;
using MergeCluster.Merge.Recipes;
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
    /// Tree when no live silo holds every model of the job (a shard's groups must then be summed where their models
    /// are), else fused: with shared storage the float64 partials of a tree are pure overhead, 4 bytes written and read
    /// back per input byte of f16. Both give the same bits.
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

/// <summary>Per-job settings carried in the ledger's job row as JSON.</summary>
public sealed record MergeJobOptions
{
    public TaskShape Shape { get; init; } = TaskShape.Auto;
    public long ShardBytes { get; init; } = 256L << 20;
    /// <summary>Absolute output path overriding the recipe's (a replay, or `merge -o`).</summary>
    public string? Output { get; init; }
    /// <summary>Record input hashes in the output metadata (needed for replay checks).</summary>
    public bool HashInputs { get; init; } = true;
    public NonFinitePolicy NonFinite { get; init; } = NonFinitePolicy.Warn;

    // Set by planning: the files the plan created, which every task, the assembly and the cleanup use (job state, see JobPlan).

    /// <summary>The preallocated temporary output (absolute), created exclusively under a random name beside the output.</summary>
    public string? TempOutput { get; init; }
    /// <summary>The temporary output's (device, inode) as "dev:ino": whoever opens it by path checks it is still that file.</summary>
    public string? TempIdentity { get; init; }
    /// <summary>The directory of a tree-shaped job's partial sums (absolute, random name); null for fused jobs.</summary>
    public string? Scratch { get; init; }

    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);
    public static MergeJobOptions FromJson(string json) =>
        string.IsNullOrWhiteSpace(json) ? new() : JsonSerializer.Deserialize<MergeJobOptions>(json, JsonOptions) ?? new();

    private static readonly JsonSerializerOptions JsonOptions = new() { Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter() } };
}

/// <summary>What a merge task works on: a shard, and for tree tasks a node of its reduction tree.</summary>
public sealed record MergeTaskPayload(int Shard, int Level = 0, int Index = 0)
{
    public string ToJson() => JsonSerializer.Serialize(this);
    public static MergeTaskPayload FromJson(string json) => JsonSerializer.Deserialize<MergeTaskPayload>(json)!;
}

/// <summary>
/// The merge as a job of the runtime: plan into shard tasks, run them, assemble the output. The coordinator's plan
/// is fixed in the preallocated output file's header, from which every silo re-derives the identical plan.
/// </summary>
public sealed class MergeJobEngine : IJobEngine, IDisposable
{
    public const string KindFused = "fused", KindLeaf = "leaf", KindReduce = "reduce", KindFinal = "final";

    private readonly Func<string, string> _resolve;
    private readonly int _threads;
    private readonly bool _embedded;
    private readonly ConcurrentDictionary<long, Lazy<JobContext>> _jobs = new();
    // The coordinator's plan, for this process's workers and assembly: a plan costs tens of milliseconds per input
    // (every header is read and validated), and the embedded default runs all three roles in one process.
    private readonly ConcurrentDictionary<long, MergePlan> _planned = new();
    // The temporary outputs this process created, open (and, embedded, locked) until assembly or cleanup.
    private readonly ConcurrentDictionary<long, SafetensorsWriter> _created = new();

    /// <param name="resolvePath">Maps an absolute path from a recipe to the path to open; the cluster confines it to data roots.</param>
    /// <param name="threads">Threads for hashing inputs while planning.</param>
    /// <param name="progress">Counters for a progress display, if any.</param>
    /// <param name="embedded">
    /// Every role of every job runs in this process (the embedded default): the temporary output is this process's
    /// alone, locked while it lives, and stale ones of dead runs beside the output are removed. A cluster job's
    /// temporary output outlives any one process and is left to the job's cleanup.
    /// </param>
    public MergeJobEngine(Func<string, string>? resolvePath = null, int threads = 1, MergeProgress? progress = null, bool embedded = false)
    {
        _resolve = resolvePath ?? (p => p);
        _threads = Math.Max(1, threads);
        _embedded = embedded;
        Progress = progress;
    }

    public MergeProgress? Progress { get; }

    /// <summary>
    /// Told, after a job's output is committed in this process, of each tensor with NaN or infinite values (policy
    /// warn). A cluster job's tensors are known to the silos that computed them, which record them on their task spans.
    /// </summary>
    public Action<NonFiniteTensor>? OnNonFinite { get; init; }

    /// <summary>
    /// A plan already made of a job's recipe with its output (the embedded run's caller plans first to check and
    /// print): planning uses it, cut into this job's shards, instead of reading every header again.
    /// </summary>
    public MergePlan? KnownPlan { get; init; }

    /// <summary>
    /// Plans the job (checking every input header first), hashes the inputs, creates the temporary output (exclusively,
    /// random name, header written, full size) and for a tree the scratch directory, and returns the tasks with the
    /// job's options completed by those paths.
    /// </summary>
    public Task<JobPlan> PlanAsync(JobRecord job, IReadOnlyList<SiloRecord> silos, CancellationToken ct) =>
        // Minutes of reading and hashing for 50 checkpoints: off the coordinator's thread, which must see a cancel.
        Task.Run(() => Plan(job, silos, ct), ct);

    private JobPlan Plan(JobRecord job, IReadOnlyList<SiloRecord> silos, CancellationToken ct)
    {
        var options = MergeJobOptions.FromJson(job.Options);
        var recipe = ParseRecipe(job);
        var planOptions = PlanOptionsFor(job, options, null);
        var plan = KnownPlan is { } known && known.Recipe.Text == job.RecipeText && known.Recipe.Directory == job.RecipeDirectory
            && (planOptions.OutputPath is null || planOptions.OutputPath == known.OutputPath) && !known.Metadata.ContainsKey(MergeMetadata.Inputs)
            ? Planner.Reshard(known, options.ShardBytes)
            : Planner.Create(recipe, planOptions);
        if (options.HashInputs)
            plan = Planner.WithInputHashes(plan, InputHashes.Compute(plan.Inputs, _threads, ct, Progress), options.ShardBytes);
        ct.ThrowIfCancellationRequested();
        var shape = options.Shape == TaskShape.Auto ? ShapeFor(plan, silos) : options.Shape;
        var writer = SafetensorsWriter.Create(plan.OutputPath, plan.Layout, _embedded ? null : job.Id);
        string? scratch = null;
        try
        {
            if (shape == TaskShape.Tree) scratch = OutputTemp.CreateDirectory(plan.OutputPath, job.Id);
            var planned = options with { TempOutput = writer.TempPath, TempIdentity = writer.TempIdentity.ToString(), Scratch = scratch };
            var tasks = Tasks(plan, shape, silos);
            _created[job.Id] = writer;
            _planned[job.Id] = plan;
            return new JobPlan(tasks, planned.ToJson());
        }
        catch
        {
            writer.Dispose();
            DeleteScratch(scratch);
            throw;
        }
    }

    public Task RunTaskAsync(JobRecord job, TaskLease lease, CancellationToken ct) =>
        Task.Factory.StartNew(() => RunTask(job, lease, ct), ct, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    public Task AssembleAsync(JobRecord job, CancellationToken ct)
    {
        MergePlan? known = null;
        List<NonFiniteTensor> nonFinite = [];
        if (_jobs.TryRemove(job.Id, out var lazy) && lazy.IsValueCreated)
        {
            known = lazy.Value.Plan;
            // The inputs are looked at only now, and only for the tensors found non-finite: the merge's loops stay clean.
            foreach (var t in lazy.Value.NonFinite.Values.OrderBy(t => t.Index)) nonFinite.Add(Describe(lazy.Value, t));
            lazy.Value.Dispose();
        }
        _planned.TryRemove(job.Id, out var planned);
        var options = MergeJobOptions.FromJson(job.Options);
        var plan = known ?? planned ?? Planner.Create(ParseRecipe(job), PlanOptionsFor(job, options, null));
        var (temp, identity) = TempOutputOf(job, options);
        if (_created.TryRemove(job.Id, out var writer))
        {
            using (writer)
            {
                Verify(writer.Handle, writer.TempPath, plan);
                writer.Commit();
            }
        }
        else if (RegularFile.IdentityOf(temp) is not null)
        {
            using (var handle = RegularFile.OpenOwned(temp, identity, write: false)) Verify(handle, temp, plan);
            SafetensorsWriter.CommitExisting(temp, identity, plan.OutputPath);
        }
        // Assembly is idempotent: a coordinator that died after the rename left the output in place.
        else if (RegularFile.IdentityOf(plan.OutputPath) != identity)
            throw new PermanentTaskException($"{plan.OutputPath}: the job's temporary output is gone");
        DeleteScratch(ScratchOf(options));
        foreach (var t in nonFinite) OnNonFinite?.Invoke(t);
        return Task.CompletedTask;
    }

    /// <summary>Which of a non-finite output tensor's sources hold NaN or infinite values, read from the mapped inputs.</summary>
    private static NonFiniteTensor Describe(JobContext context, PlannedTensor tensor)
    {
        const int window = 4 << 20;
        var names = new List<string>();
        foreach (var term in tensor.Terms)
        {
            string name = context.Plan.Inputs[term.Input].Name;
            if (names.Contains(name) || !term.Tensor.DType.IsFloat()) continue;
            for (long offset = 0; offset < term.Tensor.ByteLength; offset += window)
            {
                int length = (int)Math.Min(window, term.Tensor.ByteLength - offset);
                long bad = DTypeConvert.CountNonFinite(term.Tensor.DType, context.Inputs.Window(term, offset, length));
                context.Inputs.Release(term, offset, length);
                if (bad == 0) continue;
                names.Add(name);
                break;
            }
        }
        return new NonFiniteTensor(tensor.Output.Key, names, tensor.Output.DType);
    }

    /// <summary>Before the rename: the reader's validation proves the file is complete (data ends exactly at EOF).</summary>
    private static void Verify(Microsoft.Win32.SafeHandles.SafeFileHandle handle, string temp, MergePlan plan)
    {
        var header = SafetensorsFile.ReadHeader(handle, temp, out _);
        if (header.Tensors.Length != plan.Tensors.Length)
            throw new PermanentTaskException($"{temp}: assembled output does not match the plan");
    }

    public Task CleanupAsync(JobRecord job, CancellationToken ct)
    {
        if (_jobs.TryRemove(job.Id, out var lazy) && lazy.IsValueCreated) lazy.Value.Dispose();
        _planned.TryRemove(job.Id, out _);
        var options = MergeJobOptions.FromJson(job.Options);
        // Only the paths planning recorded are removed, and the temporary output only while it is still the file
        // planning created: a job that failed before its plan was stored has nothing of its own to remove.
        if (_created.TryRemove(job.Id, out var writer)) writer.Dispose();
        else if (options.TempOutput is not null && FileIdentity.TryParse(options.TempIdentity, out var identity))
            RegularFile.DeleteIfOwned(_resolve(options.TempOutput), identity);
        DeleteScratch(ScratchOf(options));
        return Task.CompletedTask;
    }

    /// <summary>The temporary output planning created, as the job's options record it, confined like any other path.</summary>
    private (string Path, FileIdentity Identity) TempOutputOf(JobRecord job, MergeJobOptions options)
    {
        if (options.TempOutput is null || !FileIdentity.TryParse(options.TempIdentity, out var identity))
            throw new PermanentTaskException($"job {job.Id}: its options name no temporary output (was it planned by this version?)");
        return (_resolve(options.TempOutput), identity);
    }

    private string? ScratchOf(MergeJobOptions options) => options.Scratch is null ? null : _resolve(options.Scratch);

    private void RunTask(JobRecord job, TaskLease lease, CancellationToken ct)
    {
        JobContext context;
        try { context = _jobs.GetOrAdd(job.Id, _ => new Lazy<JobContext>(() => OpenJob(job))).Value; }
        catch (Exception e) when (e is MergeException or SafetensorsException)
        {
            _jobs.TryRemove(job.Id, out _);
            throw new PermanentTaskException(e.Message, e);
        }
        var payload = MergeTaskPayload.FromJson(lease.Payload);
        var shard = context.Plan.Shards[payload.Shard];
        var executor = context.RentExecutor(Progress);
        long read0 = executor.BytesRead, written0 = executor.BytesWritten;
        var span = Activity.Current;
        span?.SetTag(MergeTelemetry.ShardTag, shard.Index);
        span?.SetTag(MergeTelemetry.ModelsTag, ModelsOf(context.Plan, shard, lease.Kind == KindLeaf ? payload.Index : null));
        try
        {
            switch (lease.Kind)
            {
                case KindFused:
                    executor.RunFused(shard, context.Output, ct);
                    break;
                case KindLeaf:
                    WritePartial(context, shard, new PartialNode(0, payload.Index), lease.Attempt, s => executor.RunLeaf(shard, payload.Index, s, ct));
                    break;
                case KindReduce:
                    {
                        var node = new PartialNode(payload.Level, payload.Index);
                        var tree = new ShardTree(context.Plan, shard);
                        var (left, right) = tree.Children(node);
                        using var l = OpenPartial(context, shard, left);
                        using var r = OpenPartial(context, shard, right);
                        WritePartial(context, shard, node, lease.Attempt, s => executor.RunReduce(shard, node, left, right, l, r, s, ct));
                        break;
                    }
                case KindFinal:
                    {
                        var root = new ShardTree(context.Plan, shard).Root;
                        using var data = root is null ? null : OpenPartial(context, shard, root);
                        executor.RunFinal(shard, root, data, context.Output, ct);
                        context.Output.Flush();
                        break;
                    }
                default:
                    throw new PermanentTaskException($"unknown task kind '{lease.Kind}'");
            }
            RefuseNonFinite(context, shard);
        }
        catch (Exception e) when (e is MergeException or SafetensorsException)
        {
            throw new PermanentTaskException(e.Message, e);
        }
        finally
        {
            long read = executor.BytesRead - read0, written = executor.BytesWritten - written0;
            span?.SetTag("mergecluster.bytes.read", read);
            span?.SetTag("mergecluster.bytes.written", written);
            MergeTelemetry.BytesRead.Add(read);
            MergeTelemetry.BytesWritten.Add(written);
            context.ReturnExecutor(executor);
        }
    }

    /// <summary>
    /// Records the shard's non-finite tensors on the task's span, and under <see cref="NonFinitePolicy.Error"/> fails
    /// the job (permanently: the inputs will not change), so nothing is written.
    /// </summary>
    private static void RefuseNonFinite(JobContext context, Shard shard)
    {
        if (context.NonFinite.IsEmpty) return;
        var found = shard.TensorIndices.Where(context.NonFinite.ContainsKey).Select(i => context.Plan.Tensors[i]).ToList();
        if (found.Count == 0) return;
        foreach (var t in found)
            Activity.Current?.AddEvent(new ActivityEvent("mergecluster.nonfinite", tags: new ActivityTagsCollection { ["mergecluster.key"] = t.Output.Key }));
        if (context.Policy != NonFinitePolicy.Error) return;
        var first = Describe(context, found[0]);
        throw new PermanentTaskException($"{context.Plan.OutputPath}: tensor '{first.Key}': the merged values include NaN or infinity ({first.Cause})"
            + (found.Count > 1 ? $", and {found.Count - 1} more tensors of this shard do" : "") + "; --nonfinite error writes nothing (warn or keep would write the file)");
    }

    /// <summary>The models a task reads, for its span: all of the shard's, or one reduction group's.</summary>
    private static string ModelsOf(MergePlan plan, Shard shard, int? group)
    {
        var names = new SortedSet<string>(StringComparer.Ordinal);
        foreach (int i in shard.TensorIndices)
            foreach (var t in plan.Tensors[i].Terms)
                if (group is null || t.Group == group) names.Add(plan.Inputs[t.Input].Name);
        return string.Join(",", names);
    }

    /// <summary>Re-derives the coordinator's plan from the recipe and the input hashes fixed in the preallocated output.</summary>
    private JobContext OpenJob(JobRecord job)
    {
        var options = MergeJobOptions.FromJson(job.Options);
        var (temp, identity) = TempOutputOf(job, options);
        string? scratch = ScratchOf(options);
        if (_planned.TryGetValue(job.Id, out var own))
            return new JobContext(own, new InputSet(own), SafetensorsWriter.OpenExisting(own.OutputPath, temp, identity, own.Layout), scratch, options.NonFinite);
        var recipe = ParseRecipe(job);
        SafetensorsHeader header;
        long length;
        using (var handle = RegularFile.OpenOwned(temp, identity, write: false)) header = SafetensorsFile.ReadHeader(handle, temp, out length);
        var hashes = header.Metadata.TryGetValue(MergeMetadata.Inputs, out string? json) ? MergeMetadata.ParseInputs(json, temp) : null;
        var plan = Planner.Create(recipe, PlanOptionsFor(job, options, hashes));
        if (plan.Layout.DataStart != header.DataStart || plan.Layout.TotalLength != length)
            throw new MergeException($"{temp}: this silo's plan differs from the coordinator's (inputs changed since the job was planned?)");
        var output = SafetensorsWriter.OpenExisting(plan.OutputPath, temp, identity, plan.Layout);
        return new JobContext(plan, new InputSet(plan), output, scratch, options.NonFinite);
    }

    private static void WritePartial(JobContext context, Shard shard, PartialNode node, int attempt, Action<Stream> produce)
    {
        using var span = MergeTelemetry.Source.StartActivity("mergecluster.write.partial");
        span?.SetTag(MergeTelemetry.ShardTag, shard.Index);
        span?.SetTag("mergecluster.partial", node.Name(shard));
        // Every write has a file of its own, committed by rename: a dead attempt's bytes never reach a reader, and two
        // runners of one attempt (a claim the ledger lost in a crash, then granted again) never write one file.
        string final = PartialPath(context, shard, node);
        string temp = $"{final}.a{attempt}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                produce(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, final, overwrite: true);
        }
        catch
        {
            TryDelete(temp);
            throw;
        }
    }

    /// <summary>
    /// A reduce or final task is done in the ledger, so it never runs again and its children's partial sums are dead:
    /// delete them now rather than at the job's end, or a 50-model SDXL job would hold hundreds of GB of float64 partials.
    /// </summary>
    public Task TaskDoneAsync(JobRecord job, TaskLease lease, CancellationToken ct)
    {
        if (lease.Kind is not (KindReduce or KindFinal) || !_jobs.TryGetValue(job.Id, out var lazy) || !lazy.IsValueCreated)
            return Task.CompletedTask;
        var context = lazy.Value;
        var payload = MergeTaskPayload.FromJson(lease.Payload);
        var shard = context.Plan.Shards[payload.Shard];
        var tree = new ShardTree(context.Plan, shard);
        if (lease.Kind == KindFinal)
        {
            if (tree.Root is { } root) TryDelete(PartialPath(context, shard, root));
        }
        else
        {
            var (left, right) = tree.Children(new PartialNode(payload.Level, payload.Index));
            TryDelete(PartialPath(context, shard, left));
            TryDelete(PartialPath(context, shard, right));
        }
        return Task.CompletedTask;
    }

    private static FileStream OpenPartial(JobContext context, Shard shard, PartialNode node)
    {
        string path = PartialPath(context, shard, node);
        Activity.Current?.AddEvent(new ActivityEvent("mergecluster.read.partial", tags: new ActivityTagsCollection { ["mergecluster.partial"] = node.Name(shard) }));
        try { return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan); }
        catch (FileNotFoundException e)
        {
            throw new IOException($"{path}: partial sum missing (its task will be retried)", e);
        }
    }

    private static string PartialPath(JobContext context, Shard shard, PartialNode node) =>
        Path.Combine(context.Scratch ?? throw new PermanentTaskException("a tree task of a job planned without a scratch directory"), node.Name(shard) + ".partial");

    /// <summary>The task graph: per shard either one fused task, or leaves, pairwise reduces and a final task.</summary>
    public static IReadOnlyList<TaskSpec> Tasks(MergePlan plan, TaskShape shape, IReadOnlyList<SiloRecord> silos)
    {
        var tasks = new List<TaskSpec>();
        foreach (var shard in plan.Shards)
        {
            var tree = new ShardTree(plan, shard);
            if (shape == TaskShape.Fused || tree.Root is null || plan.GroupCount == 1)
            {
                // A single group needs no partial sums: the fused task computes the very same bits.
                tasks.Add(new TaskSpec(TaskName(shard, KindFused), KindFused, new MergeTaskPayload(shard.Index).ToJson(), [], shard.InputBytes));
                continue;
            }
            foreach (var node in tree.Producers())
            {
                string kind = node.Level == 0 ? KindLeaf : KindReduce;
                var deps = node.Level == 0 ? [] : tree.Children(node) switch { var (l, r) => new[] { NodeTask(shard, l), NodeTask(shard, r) } };
                long bytes = node.Level == 0 ? GroupBytes(plan, shard, node.Index) : 0;
                tasks.Add(new TaskSpec(NodeTask(shard, node), kind, new MergeTaskPayload(shard.Index, node.Level, node.Index).ToJson(), deps, bytes,
                    node.Level == 0 ? PreferredSilo(plan, shard, node.Index, silos) : null));
            }
            tasks.Add(new TaskSpec(TaskName(shard, KindFinal), KindFinal, new MergeTaskPayload(shard.Index).ToJson(), [NodeTask(shard, tree.Root)], shard.OutputBytes));
        }
        return tasks;
    }

    private static string TaskName(Shard shard, string kind) => $"s{shard.Index:D5}/{kind}";
    private static string NodeTask(Shard shard, PartialNode node) => $"s{shard.Index:D5}/l{node.Level}n{node.Index}";

    private static long GroupBytes(MergePlan plan, Shard shard, int group)
    {
        long sum = 0;
        foreach (int i in shard.TensorIndices)
            foreach (var t in plan.Tensors[i].Terms)
                if (plan.Tensors[i].Op == TensorOp.Combine && t.Group == group) sum += t.Tensor.ByteLength;
        return sum;
    }

    /// <summary>What <see cref="TaskShape.Auto"/> means for this plan and these silos.</summary>
    public static TaskShape ShapeFor(MergePlan plan, IReadOnlyList<SiloRecord> silos)
    {
        var files = new HashSet<string>(StringComparer.Ordinal);
        foreach (var input in plan.Inputs)
            if (input.Length > 0) files.Add(Path.GetFileName(input.Path));
        foreach (var silo in silos)
            if (!string.IsNullOrEmpty(silo.Models) && files.IsSubsetOf(HeldFiles(silo)))
                return TaskShape.Fused;
        // No silo declares models (none scanned yet, or silos with no data roots) also means fused: nothing to place near.
        return silos.Any(s => !string.IsNullOrEmpty(s.Models)) ? TaskShape.Tree : TaskShape.Fused;
    }

    /// <summary>The file names of the checkpoints a silo declared (paths, one a line or comma-separated).</summary>
    private static IEnumerable<string> HeldFiles(SiloRecord silo) =>
        (silo.Models ?? "").Split(['\n', ','], StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Select(m => Path.GetFileName(m));

    /// <summary>The silo that declares the most of this group's models, so leaves read local disks where they can.</summary>
    private static string? PreferredSilo(MergePlan plan, Shard shard, int group, IReadOnlyList<SiloRecord> silos)
    {
        var files = new HashSet<string>(StringComparer.Ordinal);
        foreach (int i in shard.TensorIndices)
            foreach (var t in plan.Tensors[i].Terms)
                if (t.Group == group) files.Add(Path.GetFileName(plan.Inputs[t.Input].Path));
        string? best = null;
        int bestCount = 0;
        foreach (var silo in silos)
        {
            int count = HeldFiles(silo).Count(files.Contains);
            if (count > bestCount) (best, bestCount) = (silo.Name, count);
        }
        return best;
    }

    private Recipe ParseRecipe(JobRecord job) => Recipe.Parse(job.RecipeText, job.RecipeDirectory, $"job {job.Id} recipe");

    private PlanOptions PlanOptionsFor(JobRecord job, MergeJobOptions options, IReadOnlyDictionary<string, string>? hashes) => new()
    {
        ShardBytes = options.ShardBytes,
        InputHashes = hashes,
        OutputPath = options.Output is null ? null : _resolve(Path.GetFullPath(options.Output)),
        ResolvePath = p => _resolve(Path.GetFullPath(Path.Combine(job.RecipeDirectory, p))),
    };

    private static void DeleteScratch(string? dir)
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

    private static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    public void Dispose()
    {
        foreach (var ctx in _jobs.Values) if (ctx.IsValueCreated) ctx.Value.Dispose();
        _jobs.Clear();
        _planned.Clear();
        // Jobs still unfinished when the engine goes: embedded, their temporary outputs go too; a cluster job's stay
        // for whichever coordinator finishes or cleans up the job.
        foreach (var writer in _created.Values)
        {
            if (_embedded) writer.Dispose();
            else writer.Detach();
        }
        _created.Clear();
    }

    /// <summary>What a silo keeps open for a job while it runs its tasks.</summary>
    private sealed class JobContext(MergePlan plan, InputSet inputs, SafetensorsWriter output, string? scratch, NonFinitePolicy policy) : IDisposable
    {
        private readonly ConcurrentBag<ShardExecutor> _idle = new();
        public MergePlan Plan { get; } = plan;
        public InputSet Inputs { get; } = inputs;
        public SafetensorsWriter Output { get; } = output;
        public string? Scratch { get; } = scratch;
        public NonFinitePolicy Policy { get; } = policy;
        /// <summary>Output tensors with NaN or infinite values, by plan index, as this process's tasks found them.</summary>
        public ConcurrentDictionary<int, PlannedTensor> NonFinite { get; } = new();

        public ShardExecutor RentExecutor(MergeProgress? progress) => _idle.TryTake(out var e) ? e
            : new ShardExecutor(Plan, Inputs, progress) { NonFinite = Policy == NonFinitePolicy.Keep ? null : t => NonFinite[t.Index] = t };
        public void ReturnExecutor(ShardExecutor executor) => _idle.Add(executor);

        public void Dispose()
        {
            Output.Dispose();
            Inputs.Dispose();
        }
    }
}
