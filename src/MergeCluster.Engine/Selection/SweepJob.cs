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
/// the linear ones it varies share every partial sum they can (<see cref="SweepExecutor"/>).
/// </summary>
public sealed class SweepJob
{
    private SweepJob() { }

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

    public long OutputBytes => Candidates.Sum(c => c.Plan.OutputBytes);
    public long InputBytes => Shards.Sum(s => s.InputBytes);

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
        long maxShardBytes = 256L << 20, MergeProgress? progress = null, CancellationToken ct = default)
    {
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
                string path = recipe.ModelPath(i);
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
            var plan = Planner.Create(candidate, new PlanOptions { Headers = headers });
            parsed.Add((variant.Model, candidate, plan));
        }

        // Room first, before the inputs are hashed (which reads them): the hashes only lengthen each header a little.
        CheckRoom(outputDir, parsed.Count, parsed.Sum(p => p.Plan.OutputBytes + HashesBytes(p.Plan)));
        var inputs = Union(parsed.Select(p => p.Plan).ToList());
        var hashes = hashInputs ? InputHashes.Compute(inputs, threads, ct, progress) : null;
        ct.ThrowIfCancellationRequested();
        var candidates = ImmutableArray.CreateBuilder<SweepCandidate>(parsed.Count);
        foreach (var (model, candidate, first) in parsed)
        {
            var plan = first;
            if (hashes is not null)
            {
                // Each candidate records the hashes of the inputs it reads, as its own merge would.
                var own = first.Inputs.Where(i => i.Length > 0).ToDictionary(i => i.Name, i => hashes[i.Name], StringComparer.Ordinal);
                plan = Planner.Create(candidate, new PlanOptions { Headers = headers, InputHashes = own });
            }
            candidates.Add(new SweepCandidate(model, candidate, plan));
        }

        var built = candidates.MoveToImmutable();
        CheckRoom(outputDir, built.Length, built.Sum(c => c.Plan.OutputBytes));
        var keys = KeysOf(built);
        return new SweepJob
        {
            Recipe = recipe, Mode = mode, Component = component, Candidates = built, Inputs = inputs,
            Keys = keys, Shards = Split(keys, threads, maxShardBytes), Skipped = skipped,
        };
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
