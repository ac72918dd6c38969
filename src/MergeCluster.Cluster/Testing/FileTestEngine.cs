using System.Globalization;
using MergeCluster.Engine.Ledger;
using MergeCluster.Engine.Runtime;
using MergeCluster.Engine.Telemetry;

namespace MergeCluster.Cluster.Testing;

/// <summary>
/// TEST ENGINE, not a merge: exercises the cluster runtime with real files until the merge engine is wired in.
/// Leaf tasks write deterministic bytes, reduce tasks concatenate two children up a binary tree, and assembly copies
/// the root to the output via temp file, fsync and rename, so the output is the leaves' bytes in order. Recipe
/// lines (key = value, '#' comments) also inject the faults the cluster tests need; see <see cref="Recipe"/>.
/// Selected by the hidden <c>silo --engine test</c> option.
/// </summary>
public sealed class FileTestEngine(DataRoots roots) : IJobEngine
{
    /// <summary>
    /// output: file to write (required); leaves: leaf count (default 4); leaf_bytes (default 4096); chunk_ms: pause
    /// after each of a task's 8 chunks (default 0); fail: tasks whose every attempt throws; fail_permanent: tasks that
    /// throw <see cref="PermanentTaskException"/>; stall: task@silo, never finishes on that silo until cancelled;
    /// gate: task:file, waits until the file (relative to the recipe) exists; barrier: tasks that each wait until all
    /// of them have started (so they run at once on different workers).
    /// </summary>
    public sealed record Recipe(string Output, int Leaves, int LeafBytes, int ChunkMs, ISet<string> Fail, ISet<string> FailPermanent,
        IReadOnlyDictionary<string, string> Stall, IReadOnlyDictionary<string, string> Gate, IReadOnlyList<string> Barrier)
    {
        public static Recipe Parse(string text)
        {
            var values = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var raw in text.Split('\n'))
            {
                var line = raw.Split('#', 2)[0].Trim();
                if (line.Length == 0) continue;
                var kv = line.Split('=', 2);
                if (kv.Length != 2) throw new PermanentTaskException($"test recipe: expected key = value, got '{line}'");
                values[kv[0].Trim()] = kv[1].Trim();
            }
            string[] List(string key) => values.TryGetValue(key, out var v) ? v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) : [];
            Dictionary<string, string> Pairs(string key, char separator) =>
                List(key).Select(p => p.Split(separator, 2)).ToDictionary(p => p[0], p => p.Length == 2 ? p[1] : "", StringComparer.Ordinal);
            int Int(string key, int fallback) => values.TryGetValue(key, out var v) ? int.Parse(v, CultureInfo.InvariantCulture) : fallback;
            if (Int("leaves", 4) < 1) throw new PermanentTaskException("test recipe: 'leaves' must be at least 1");
            return new Recipe(
                values.GetValueOrDefault("output") ?? throw new PermanentTaskException("test recipe: 'output' is missing"),
                Int("leaves", 4), Int("leaf_bytes", 4096), Int("chunk_ms", 0),
                List("fail").ToHashSet(StringComparer.Ordinal), List("fail_permanent").ToHashSet(StringComparer.Ordinal),
                Pairs("stall", '@'), Pairs("gate", ':'), List("barrier"));
        }
    }

    /// <summary>The bytes leaf <paramref name="index"/> writes; the output is these, leaf by leaf.</summary>
    public static byte[] LeafBytes(int index, int length)
    {
        var bytes = new byte[length];
        for (int k = 0; k < length; k++) bytes[k] = (byte)((index * 131 + k * 7 + (k >> 8)) % 251);
        return bytes;
    }

    public Task<JobPlan> PlanAsync(JobRecord job, IReadOnlyList<SiloRecord> silos, CancellationToken ct) =>
        Task.FromResult(new JobPlan(Tasks(job), job.Options));

    private List<TaskSpec> Tasks(JobRecord job)
    {
        var recipe = Recipe.Parse(job.RecipeText);
        roots.Resolve(recipe.Output, job.RecipeDirectory); // refuses an output outside the data roots before any work
        var tasks = new List<TaskSpec>();
        var level = new List<(string Name, long Bytes)>();
        for (int i = 0; i < recipe.Leaves; i++)
        {
            tasks.Add(new TaskSpec($"leaf{i}", "leaf", i.ToString(CultureInfo.InvariantCulture), [], recipe.LeafBytes));
            level.Add(($"leaf{i}", recipe.LeafBytes));
        }
        // Pairwise up a binary tree fixed by leaf order, as the merge's reduction is fixed by model order.
        for (int depth = 1; level.Count > 1; depth++)
        {
            var next = new List<(string, long)>();
            for (int i = 0; i + 1 < level.Count; i += 2)
            {
                var (a, b) = (level[i], level[i + 1]);
                var name = $"reduce{depth}.{i / 2}";
                tasks.Add(new TaskSpec(name, "reduce", $"{a.Name},{b.Name}", [a.Name, b.Name], a.Bytes + b.Bytes));
                next.Add((name, a.Bytes + b.Bytes));
            }
            if (level.Count % 2 == 1) next.Add(level[^1]);
            level = next;
        }
        return tasks;
    }

    public async Task RunTaskAsync(JobRecord job, TaskLease lease, CancellationToken ct)
    {
        var recipe = Recipe.Parse(job.RecipeText);
        var scratch = Scratch(job, recipe);
        Directory.CreateDirectory(scratch);
        await InjectedFaultsAsync(job, recipe, lease, scratch, ct);

        byte[] content = lease.Kind == "leaf"
            ? LeafBytes(int.Parse(lease.Payload, CultureInfo.InvariantCulture), recipe.LeafBytes)
            : await ReadChildrenAsync(scratch, lease.Payload.Split(','), ct);
        // Attempt-scoped scratch, committed by rename: a dead attempt's partial file never becomes the task's result.
        var temp = Path.Join(scratch, $"{lease.Name}.{lease.Silo}.a{lease.Attempt}.tmp");
        await using (var file = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16, useAsync: true))
        {
            int chunk = Math.Max(1, (content.Length + 7) / 8);
            for (int offset = 0; offset < content.Length; offset += chunk)
            {
                await file.WriteAsync(content.AsMemory(offset, Math.Min(chunk, content.Length - offset)), ct);
                if (recipe.ChunkMs > 0) await Task.Delay(recipe.ChunkMs, ct);
            }
            file.Flush(flushToDisk: true);
        }
        MergeTelemetry.BytesWritten.Add(content.Length);
        File.Move(temp, Path.Join(scratch, $"{lease.Name}.bin"), overwrite: true);
    }

    private async Task InjectedFaultsAsync(JobRecord job, Recipe recipe, TaskLease lease, string scratch, CancellationToken ct)
    {
        if (recipe.FailPermanent.Contains(lease.Name)) throw new PermanentTaskException($"{lease.Name}: corrupt input (injected by the test recipe)");
        if (recipe.Fail.Contains(lease.Name)) throw new IOException($"{lease.Name}: read error (injected by the test recipe)");
        if (recipe.Stall.TryGetValue(lease.Name, out var stallOn) && stallOn == lease.Silo) await Task.Delay(Timeout.Infinite, ct);
        if (recipe.Gate.TryGetValue(lease.Name, out var gate))
        {
            var flag = roots.Resolve(gate, job.RecipeDirectory);
            while (!File.Exists(flag)) await Task.Delay(20, ct);
        }
        if (recipe.Barrier.Contains(lease.Name))
        {
            await File.WriteAllTextAsync(Path.Join(scratch, $"{lease.Name}.started"), lease.Silo, ct);
            while (!recipe.Barrier.All(name => File.Exists(Path.Join(scratch, $"{name}.started")))) await Task.Delay(20, ct);
        }
    }

    private static async Task<byte[]> ReadChildrenAsync(string scratch, string[] children, CancellationToken ct)
    {
        var parts = new List<byte[]>();
        foreach (var child in children) parts.Add(await File.ReadAllBytesAsync(Path.Join(scratch, $"{child}.bin"), ct));
        MergeTelemetry.BytesRead.Add(parts.Sum(p => (long)p.Length));
        return parts.SelectMany(p => p).ToArray();
    }

    public async Task AssembleAsync(JobRecord job, CancellationToken ct)
    {
        var recipe = Recipe.Parse(job.RecipeText);
        var output = roots.Resolve(recipe.Output, job.RecipeDirectory);
        var scratch = Scratch(job, recipe);
        var plan = Tasks(job);
        var root = Path.Join(scratch, $"{plan[^1].Name}.bin");
        if (!File.Exists(root) && File.Exists(output)) return; // assembled before a coordinator takeover
        var temp = $"{output}.job{job.Id}.tmp";
        await using (var source = File.OpenRead(root))
        await using (var target = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            await source.CopyToAsync(target, ct);
            target.Flush(flushToDisk: true);
        }
        File.Move(temp, output, overwrite: true);
        Directory.Delete(scratch, recursive: true);
    }

    public Task CleanupAsync(JobRecord job, CancellationToken ct)
    {
        var recipe = Recipe.Parse(job.RecipeText);
        var scratch = Scratch(job, recipe);
        if (Directory.Exists(scratch)) Directory.Delete(scratch, recursive: true);
        var temp = $"{roots.Resolve(recipe.Output, job.RecipeDirectory)}.job{job.Id}.tmp";
        File.Delete(temp);
        return Task.CompletedTask;
    }

    /// <summary>The job's scratch directory, beside the output and so under the same data root.</summary>
    public string Scratch(JobRecord job, Recipe recipe) =>
        Path.Join(Path.GetDirectoryName(roots.Resolve(recipe.Output, job.RecipeDirectory))!, $".mergecluster-job{job.Id}");
}
