using System.Collections.Concurrent;
using System.Collections.Immutable;
using MergeCluster.Engine.Execution;
using MergeCluster.Merge;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Recipes;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Engine.Selection;

/// <summary>How a sweep varies the recipe.</summary>
public enum SweepMode
{
    /// <summary>For each model of the component's rule, the recipe without it.</summary>
    LeaveOneOut,
    /// <summary>For each model holding the component, the recipe with the component copied from it alone.</summary>
    Swap,
}

/// <summary>One candidate of a sweep: the model it varies, its recipe, and that recipe's plan (with its own output and header).</summary>
public sealed record SweepCandidate(string Model, Recipe Recipe, MergePlan Plan);

/// <summary>A key of the sweep: each candidate's planned tensor for it (null where a candidate's output lacks it).</summary>
public sealed record SweepKey(string Key, Component Component, ImmutableArray<PlannedTensor?> Tensors);

/// <summary>A contiguous run of keys: one task, writing its tensors into every candidate's output.</summary>
public sealed record SweepShard(int Index, int FirstKey, int KeyCount, long InputBytes);

/// <summary>
/// A sweep as a job of tasks: every candidate recipe is planned as `merge` would plan it (so each candidate's bytes
/// are those of its own merge), then the keys are cut into shards; a task reads each input window of its keys once and
/// writes the key's tensor into every candidate's output. Tensors a candidate shares with others are computed once;
/// the linear ones it varies share every partial sum they can (<see cref="SweepExecutor"/>). Locally
/// <see cref="RunAsync"/> runs the shards on this process's threads; a cluster job (<see cref="CreateForCluster"/>,
/// <see cref="Open"/>) preallocates every candidate's temporary output as a merge job does, runs one task per shard
/// wherever it is placed, and <see cref="Assemble"/> commits them all.
/// </summary>
public sealed class SweepJob : IShardedJob
{
    private SweepJob() { }

    private IReadOnlyList<MergeTask>? _tasks;
    private string? _digest;

    public required Recipe Recipe { get; init; }
    public required SweepMode Mode { get; init; }
    public required Component Component { get; init; }
    public required ImmutableArray<SweepCandidate> Candidates { get; init; }
    /// <summary>The recipe's models as every candidate sees them (index = place in `models:`); unused ones have length 0.</summary>
    public required ImmutableArray<MergeInput> Inputs { get; init; }
    public required ImmutableArray<SweepKey> Keys { get; init; }
    public required ImmutableArray<SweepShard> Shards { get; init; }
    /// <summary>Models a swap leaves out because they hold none of the component's keys.</summary>
    public required ImmutableArray<string> Skipped { get; init; }

    /// <summary>The directory the candidates are written to.</summary>
    public required string OutputDirectory { get; init; }
    /// <summary>A cluster job's temporary outputs, one per candidate in candidate order (empty for a local sweep).</summary>
    public ImmutableArray<OwnedTemp> Temps { get; private init; } = [];

    public long OutputBytes => Candidates.Sum(c => c.Plan.OutputBytes);
    public long InputBytes => Shards.Sum(s => s.InputBytes);

    public string Kind => "sweep";
    public TaskShape Shape => TaskShape.Fused;
    public string OutputPath => OutputDirectory;
    public string? Scratch => null;

    /// <summary>One task per shard, writing into every candidate.</summary>
    public IReadOnlyList<MergeTask> Tasks => _tasks ??= [.. Shards.Select(s => new MergeTask(s.Index, $"s{s.Index:D5}/{TaskKinds.Sweep}", TaskKinds.Sweep, s.Index, 0, 0, [], s.InputBytes, InputsOf(s)))];

    /// <summary>Every candidate's header (its recipe and input hashes) and the shards: what every machine must derive again.</summary>
    public string Digest => _digest ??= DigestOf();

    /// <summary>The candidate's file: DIR/&lt;recipe-stem&gt;-minus-&lt;model&gt; or DIR/&lt;recipe-stem&gt;-&lt;component&gt;-&lt;model&gt;.</summary>
    public static string CandidatePath(string recipePath, SweepMode mode, Component component, string model, string dir)
    {
        string stem = Path.GetFileNameWithoutExtension(recipePath);
        string name = mode == SweepMode.LeaveOneOut ? $"{stem}-minus-{model}" : $"{stem}-{component.Name()}-{model}";
        return Path.Combine(Path.GetFullPath(dir), name + ".safetensors");
    }

    /// <summary>
    /// Plans every candidate (reading each input header once; a candidate whose output is one of the recipe's models
    /// by file identity is refused, as `merge` refuses it), hashes the inputs once (cancellable, reported to
    /// <paramref name="progress"/>), and checks that the output directory has room for all candidates, before any
    /// tensor is read.
    /// </summary>
    public static SweepJob Create(Recipe recipe, SweepMode mode, Component component, string outputDir, bool hashInputs, int threads,
        long maxShardBytes = 256L << 20, MergeProgress? progress = null, CancellationToken ct = default) =>
        Plan(recipe, mode, component, outputDir, hashInputs ? null : NoHashes, threads, threads, maxShardBytes, null, checkRoom: true, progress, ct);

    private static readonly IReadOnlyDictionary<string, string> NoHashes = new Dictionary<string, string>();

    /// <summary>
    /// Plans the sweep. <paramref name="hashes"/>: the inputs' hashes already known (an opened cluster job reads them
    /// from its temporary outputs), <see cref="NoHashes"/> for none, null to compute them on
    /// <paramref name="hashThreads"/> threads. <paramref name="shardThreads"/> sizes the shards (1 for a cluster job,
    /// whose shards must be the same on every machine). <paramref name="resolve"/> maps the recipe's absolute paths to
    /// those this machine opens (a silo confines them to its data roots).
    /// </summary>
    private static SweepJob Plan(Recipe recipe, SweepMode mode, Component component, string outputDir, IReadOnlyDictionary<string, string>? hashes,
        int hashThreads, int shardThreads, long maxShardBytes, Func<string, string>? resolve, bool checkRoom,
        MergeProgress? progress = null, CancellationToken ct = default)
    {
        string Resolved(string path) => resolve is null ? Path.GetFullPath(Path.Combine(recipe.Directory, path)) : resolve(Path.GetFullPath(Path.Combine(recipe.Directory, path)));
        Func<string, string>? resolvePath = resolve is null ? null : Resolved;
        string outputs = resolve is null ? Path.GetFullPath(outputDir) : resolve(Path.GetFullPath(outputDir));
        var headers = new Dictionary<FileIdentity, (SafetensorsHeader Header, long Length)>();
        SafetensorsHeader Read(string path)
        {
            using var handle = SafetensorsFile.OpenChecked(path);
            var identity = RegularFile.Identity(handle);
            if (!headers.TryGetValue(identity, out var seen))
                headers[identity] = seen = (SafetensorsFile.ReadHeader(handle, path, out long length), length);
            return seen.Header;
        }

        var skipped = ImmutableArray<string>.Empty;
        IReadOnlyList<RecipeVariant> variants;
        if (mode == SweepMode.LeaveOneOut)
            variants = RecipeVariants.LeaveOneOut(recipe, component);
        else
        {
            var holding = new List<string>();
            var lacking = new List<string>();
            for (int i = 0; i < recipe.Models.Length; i++)
            {
                string path = Resolved(recipe.Models[i].Path);
                if (!File.Exists(path)) throw new MergeException($"{recipe.Source}:{recipe.Models[i].Line}: model '{recipe.Models[i].Name}': {path}: file not found");
                var header = Read(path);
                (header.Keys.Any(k => ModelArchitecture.Unknown.ComponentOf(k) == component) ? holding : lacking).Add(recipe.Models[i].Name);
            }
            if (holding.Count == 0) throw new MergeException($"{recipe.Source}: no model of the recipe holds component {component.Name()}");
            skipped = [.. lacking];
            variants = RecipeVariants.Swap(recipe, component, holding);
        }

        var parsed = new List<(string Model, Recipe Recipe, MergePlan Plan)>();
        foreach (var variant in variants)
        {
            string output = CandidatePath(recipe.Source, mode, component, variant.Model, outputDir);
            string text = RecipeVariants.WithOutputPath(variant.Text, Path.GetRelativePath(recipe.Directory, output));
            var candidate = Recipe.Parse(text, recipe.Directory, $"{recipe.Source} (candidate {Path.GetFileName(output)})");
            // Every candidate lists all the recipe's models, so planning refuses an output that is any of them.
            var plan = Planner.Create(candidate, new PlanOptions { Headers = headers, ResolvePath = resolvePath });
            parsed.Add((variant.Model, candidate, plan));
        }

        // Room first, before the inputs are hashed (which reads them): the hashes only lengthen each header a little.
        if (checkRoom) CheckRoom(outputs, parsed.Count, parsed.Sum(p => p.Plan.OutputBytes + HashesBytes(p.Plan)));
        var inputs = Union(parsed.Select(p => p.Plan).ToList());
        hashes ??= InputHashes.Compute(inputs, hashThreads, ct, progress);
        ct.ThrowIfCancellationRequested();
        if (hashes.Count == 0) hashes = null;
        var candidates = ImmutableArray.CreateBuilder<SweepCandidate>(parsed.Count);
        foreach (var (model, candidate, first) in parsed)
        {
            var plan = first;
            if (hashes is not null)
            {
                // Each candidate records the hashes of the inputs it reads, as its own merge would.
                var own = first.Inputs.Where(i => i.Length > 0).ToDictionary(i => i.Name,
                    i => hashes.TryGetValue(i.Name, out var h) ? h : throw new MergeException($"{plan.OutputPath}: no recorded hash of input '{i.Name}'"), StringComparer.Ordinal);
                plan = Planner.Create(candidate, new PlanOptions { Headers = headers, InputHashes = own, ResolvePath = resolvePath });
            }
            candidates.Add(new SweepCandidate(model, candidate, plan));
        }

        var built = candidates.MoveToImmutable();
        if (checkRoom) CheckRoom(outputs, built.Length, built.Sum(c => c.Plan.OutputBytes));
        var keys = KeysOf(built);
        return new SweepJob
        {
            Recipe = recipe, Mode = mode, Component = component, Candidates = built, Inputs = inputs,
            Keys = keys, Shards = Split(keys, shardThreads, maxShardBytes), Skipped = skipped, OutputDirectory = outputs,
        };
    }

    /// <summary>
    /// Plans a cluster job (room checked, inputs hashed on <paramref name="threads"/> threads) and preallocates every
    /// candidate's temporary output exclusively, named after <paramref name="clusterJob"/> (as a merge job's), closed
    /// at once: they outlive this process. A failure removes those already created.
    /// </summary>
    public static SweepJob CreateForCluster(Recipe recipe, SweepMode mode, Component component, string outputDir, bool hashInputs, long maxShardBytes,
        Func<string, string>? resolve, int threads, long clusterJob)
    {
        var job = Plan(recipe, mode, component, outputDir, hashInputs ? null : NoHashes, threads, 1, maxShardBytes, resolve, checkRoom: true);
        var temps = ImmutableArray.CreateBuilder<OwnedTemp>(job.Candidates.Length);
        try
        {
            foreach (var c in job.Candidates)
            {
                using var writer = SafetensorsWriter.Create(c.Plan.OutputPath, c.Plan.Layout, clusterJob);
                temps.Add(new OwnedTemp(writer.TempPath, writer.TempIdentity));
                writer.Detach();
            }
        }
        catch
        {
            MergeJob.Cleanup(temps, null);
            throw;
        }
        return new SweepJob
        {
            Recipe = job.Recipe, Mode = mode, Component = component, Candidates = job.Candidates, Inputs = job.Inputs,
            Keys = job.Keys, Shards = job.Shards, Skipped = job.Skipped, OutputDirectory = job.OutputDirectory, Temps = temps.MoveToImmutable(),
        };
    }

    /// <summary>
    /// Opens a cluster job another machine planned: the candidates are planned again with the input hashes fixed in
    /// their temporary outputs' headers, and must have the recorded digest. Throws <see cref="MergeException"/> when
    /// this machine sees other inputs.
    /// </summary>
    public static SweepJob Open(Recipe recipe, SweepMode mode, Component component, string outputDir, long maxShardBytes, Func<string, string>? resolve,
        IReadOnlyList<OwnedTemp> temps, string digest)
    {
        var hashes = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var temp in temps)
        {
            // A candidate already committed (the assembler died midway) is read by the others' hashes: every input is hashed the same.
            if (RegularFile.IdentityOf(temp.Path) is null) continue;
            SafetensorsHeader header;
            using (var handle = RegularFile.OpenOwned(temp.Path, temp.Identity, write: false)) header = SafetensorsFile.ReadHeader(handle, temp.Path, out _);
            if (header.Metadata.TryGetValue(MergeMetadata.Inputs, out string? json))
                foreach (var (name, hash) in MergeMetadata.ParseInputs(json, temp.Path)) hashes[name] = hash;
        }
        var planned = Plan(recipe, mode, component, outputDir, hashes, 1, 1, maxShardBytes, resolve, checkRoom: false);
        var job = new SweepJob
        {
            Recipe = planned.Recipe, Mode = mode, Component = component, Candidates = planned.Candidates, Inputs = planned.Inputs,
            Keys = planned.Keys, Shards = planned.Shards, Skipped = planned.Skipped, OutputDirectory = planned.OutputDirectory, Temps = [.. temps],
        };
        if (job.Candidates.Length != temps.Count || job.Digest != digest)
            throw new MergeException($"{job.OutputDirectory}: this machine's sweep plan differs from the one the job was planned with (inputs changed since?)");
        return job;
    }

    public IShardedRun OpenRun(MergeProgress? progress = null) => new SweepRun(this, progress);

    public IEnumerable<string> FilesOf(MergeTask task) => task.Inputs.Select(i => Path.GetFileName(Inputs[i].Path));

    /// <summary>A sweep's tasks write straight into the candidates: nothing to release.</summary>
    public void Release(MergeTask done) { }

    /// <summary>Verifies and commits every candidate's temporary output (fsync, rename); one committed before is left as it is.</summary>
    public void Assemble()
    {
        if (Temps.Length != Candidates.Length) throw new InvalidOperationException("a local sweep commits its candidates in RunAsync");
        for (int c = 0; c < Candidates.Length; c++) MergeJob.CommitExisting(Temps[c], Candidates[c].Plan);
    }

    /// <summary>A cluster job's temporary outputs stay for its assembly or cleanup.</summary>
    public void Dispose() { }

    private ImmutableArray<int> InputsOf(SweepShard shard)
    {
        var inputs = new SortedSet<int>();
        for (int k = shard.FirstKey; k < shard.FirstKey + shard.KeyCount; k++)
            foreach (var t in Keys[k].Tensors)
                if (t is not null)
                    foreach (var term in t.Terms) inputs.Add(term.Input);
        return [.. inputs];
    }

    /// <summary>Bytes a shard writes: each candidate's tensors of its keys.</summary>
    internal long OutputBytesOf(SweepShard shard)
    {
        long sum = 0;
        for (int k = shard.FirstKey; k < shard.FirstKey + shard.KeyCount; k++)
            foreach (var t in Keys[k].Tensors)
                if (t is not null) sum += t.Output.ByteLength;
        return sum;
    }

    private string DigestOf()
    {
        using var hash = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        Span<byte> word = stackalloc byte[8];
        foreach (var c in Candidates)
        {
            BitConverter.TryWriteBytes(word, c.Plan.Layout.HeaderBytes.Length);
            hash.AppendData(word);
            hash.AppendData(c.Plan.Layout.HeaderBytes);
        }
        foreach (var shard in Shards)
        {
            BitConverter.TryWriteBytes(word, ((long)shard.FirstKey << 32) | (uint)shard.KeyCount);
            hash.AppendData(word);
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset())[..32];
    }

    /// <summary>The room check before any work: the candidates' total size against the free space of the output's file system.</summary>
    private static void CheckRoom(string dir, int candidates, long needed)
    {
        Directory.CreateDirectory(dir);
        long free = new DriveInfo(Path.GetFullPath(dir)).AvailableFreeSpace;
        if (needed > free)
            throw new MergeException($"{Path.GetFullPath(dir)}: not enough disk space for {candidates} candidates: {needed} bytes needed, {free} available");
    }

    /// <summary>An upper bound of what the input hashes add to a candidate's header (`"name": "autov2hash"` per input, JSON-escaped).</summary>
    private static long HashesBytes(MergePlan plan) => 8 + plan.Inputs.Where(i => i.Length > 0).Sum(i => 12L * i.Name.Length + 64);

    /// <summary>The inputs every candidate sees: the same list, each open where any candidate reads it.</summary>
    private static ImmutableArray<MergeInput> Union(IReadOnlyList<MergePlan> plans)
    {
        var inputs = plans[0].Inputs.ToArray();
        foreach (var plan in plans)
            for (int i = 0; i < inputs.Length; i++)
                if (inputs[i].Length == 0 && plan.Inputs[i].Length > 0) inputs[i] = plan.Inputs[i];
        return [.. inputs];
    }

    private static ImmutableArray<SweepKey> KeysOf(ImmutableArray<SweepCandidate> candidates)
    {
        var byKey = new SortedDictionary<string, PlannedTensor?[]>(StringComparer.Ordinal);
        for (int c = 0; c < candidates.Length; c++)
            foreach (var t in candidates[c].Plan.Tensors)
            {
                if (!byKey.TryGetValue(t.Output.Key, out var row)) byKey[t.Output.Key] = row = new PlannedTensor?[candidates.Length];
                row[c] = t;
            }
        return [.. byKey.Select(kv => new SweepKey(kv.Key, kv.Value.First(t => t is not null)!.Component, [.. kv.Value]))];
    }

    /// <summary>Bytes a key reads: each input once for all candidates' sums and copies.</summary>
    internal static long ReadBytes(SweepKey key)
    {
        var seen = new HashSet<int>();
        long sum = 0;
        foreach (var t in key.Tensors)
            if (t is not null)
                foreach (var term in t.Terms)
                    if (seen.Add(term.Input)) sum += term.Tensor.ByteLength;
        return sum;
    }

    private static ImmutableArray<SweepShard> Split(ImmutableArray<SweepKey> keys, int threads, long maxShardBytes)
    {
        long total = keys.Sum(ReadBytes);
        long target = LocalMerge.ShardBytesFor(total, threads, maxShardBytes);
        var shards = ImmutableArray.CreateBuilder<SweepShard>();
        int first = 0;
        long bytes = 0;
        for (int i = 0; i < keys.Length; i++)
        {
            bytes += ReadBytes(keys[i]);
            if (bytes >= target || i == keys.Length - 1)
            {
                shards.Add(new SweepShard(shards.Count, first, i - first + 1, bytes));
                first = i + 1;
                bytes = 0;
            }
        }
        return shards.ToImmutable();
    }

    /// <summary>
    /// Runs every shard on <paramref name="threads"/> threads into temporary files beside each candidate's output, then
    /// commits them all (fsync, rename). Any failure removes every temporary file: no candidate is left half written.
    /// </summary>
    public async Task RunAsync(int threads, MergeProgress? progress, CancellationToken ct)
    {
        var writers = new List<SafetensorsWriter>(Candidates.Length);
        try
        {
            foreach (var c in Candidates) writers.Add(SafetensorsWriter.Create(c.Plan.OutputPath, c.Plan.Layout));
            using var inputs = new InputSet(Inputs);
            var idle = new ConcurrentBag<SweepExecutor>();
            int next = -1;
            Exception? failure = null;
            void Work()
            {
                var executor = idle.TryTake(out var e) ? e : new SweepExecutor(this, inputs, writers, progress);
                try
                {
                    while (failure is null && !ct.IsCancellationRequested)
                    {
                        int index = Interlocked.Increment(ref next);
                        if (index >= Shards.Length) return;
                        executor.Run(Shards[index], ct);
                    }
                }
                catch (Exception ex)
                {
                    Interlocked.CompareExchange(ref failure, ex, null);
                }
                finally { idle.Add(executor); }
            }
            var workers = Enumerable.Range(0, Math.Clamp(threads, 1, Math.Max(1, Shards.Length)))
                .Select(_ => Task.Factory.StartNew(Work, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default)).ToArray();
            await Task.WhenAll(workers);
            if (failure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
            ct.ThrowIfCancellationRequested();
            foreach (var w in writers) w.Commit();
        }
        finally
        {
            foreach (var w in writers) w.Dispose();
        }
    }
}

/// <summary>What one machine keeps open to run a cluster sweep's tasks: the inputs mapped, every candidate's temporary output open.</summary>
internal sealed class SweepRun : IShardedRun
{
    private readonly SweepJob _job;
    private readonly MergeProgress? _progress;
    private readonly InputSet _inputs;
    private readonly List<SafetensorsWriter> _writers = [];
    private readonly ConcurrentBag<SweepExecutor> _idle = new();

    public SweepRun(SweepJob job, MergeProgress? progress)
    {
        _job = job;
        _progress = progress;
        _inputs = new InputSet(job.Inputs);
        try
        {
            for (int c = 0; c < job.Candidates.Length; c++)
            {
                var plan = job.Candidates[c].Plan;
                _writers.Add(SafetensorsWriter.OpenExisting(plan.OutputPath, job.Temps[c].Path, job.Temps[c].Identity, plan.Layout));
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public IShardedJob Job => _job;

    public TaskBytes Run(MergeTask task, int attempt, CancellationToken ct)
    {
        var shard = _job.Shards[task.Shard];
        System.Diagnostics.Activity.Current?.SetTag(Telemetry.MergeTelemetry.ShardTag, shard.Index);
        var executor = _idle.TryTake(out var e) ? e : new SweepExecutor(_job, _inputs, _writers, _progress);
        try { executor.Run(shard, ct); }
        finally { _idle.Add(executor); }
        long written = _job.OutputBytesOf(shard);
        Telemetry.MergeTelemetry.BytesRead.Add(shard.InputBytes);
        Telemetry.MergeTelemetry.BytesWritten.Add(written);
        return new TaskBytes(shard.InputBytes, written);
    }

    /// <summary>Every candidate's output holds the task's shard.</summary>
    public void Flush(MergeTask task)
    {
        foreach (var w in _writers) w.Flush();
    }

    public void Dispose()
    {
        foreach (var w in _writers) w.Dispose();
        _inputs.Dispose();
    }
}
