using System.Collections.Concurrent;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Engine.Execution;

/// <summary>
/// AutoV2 hashes of inputs, cached by path, size and modification time (as the A1111 web UI caches them), because
/// hashing 50 checkpoints of 7 GB each costs minutes and a replay or a re-run should not pay it again.
/// </summary>
public static class InputHashes
{
    private static readonly object FileLock = new();

    public static string CachePath
    {
        get
        {
            string? dir = Environment.GetEnvironmentVariable("MERGECLUSTER_CACHE");
            if (string.IsNullOrEmpty(dir))
            {
                string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
                dir = Path.Combine(string.IsNullOrEmpty(xdg) ? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache") : xdg, "mergecluster");
            }
            return Path.Combine(dir, "hashes.tsv");
        }
    }

    /// <summary>
    /// AutoV2 of each read input by model name, hashing in parallel what is not cached, each file once however many
    /// models name it. Cancelling stops within a megabyte of reading; nothing of an unfinished hash is cached.
    /// </summary>
    public static IReadOnlyDictionary<string, string> Compute(IEnumerable<MergeInput> inputs, int threads, CancellationToken ct = default, MergeProgress? progress = null)
    {
        var (known, pending) = Lookup(inputs);
        return Compute(known, pending, threads, ct, progress);
    }

    /// <summary>As above, for the files <see cref="Lookup"/> found uncached.</summary>
    internal static IReadOnlyDictionary<string, string> Compute(Dictionary<string, string> known, List<UnhashedFile> pending, int threads, CancellationToken ct, MergeProgress? progress)
    {
        if (pending.Count == 0) return known;
        var result = new ConcurrentDictionary<string, string>(known, StringComparer.Ordinal);
        var fresh = new ConcurrentDictionary<string, string>(StringComparer.Ordinal);
        progress?.StartHashing(pending.Sum(f => f.Input.Length));
        try
        {
            Parallel.ForEach(pending, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads), CancellationToken = ct }, file =>
            {
                string hash = ModelHashes.AutoV2(file.Input.Path, ct, progress is null ? null : progress.Hashed);
                fresh[file.CacheKey] = hash;
                foreach (string name in file.Names) result[name] = hash;
            });
        }
        finally
        {
            // Files hashed before a cancel are kept: the next run need not read them again.
            Remember(fresh);
        }
        return result;
    }

    /// <summary>
    /// The cached hashes of the read inputs by model name, and the files (one per file identity, with every model
    /// name it has) whose hash is not cached.
    /// </summary>
    internal static (Dictionary<string, string> Known, List<UnhashedFile> Pending) Lookup(IEnumerable<MergeInput> inputs)
    {
        var cache = Load();
        var known = new Dictionary<string, string>(StringComparer.Ordinal);
        var pending = new List<UnhashedFile>();
        foreach (var group in inputs.Where(i => i.Length > 0).GroupBy(i => i.Identity))
        {
            var first = group.First();
            string key = Identity(first.Path);
            var names = group.Select(i => i.Name).ToList();
            if (cache.TryGetValue(key, out string? hash)) foreach (string name in names) known[name] = hash;
            else pending.Add(new UnhashedFile(first, key, names));
        }
        return (known, pending);
    }

    private static string Identity(string path)
    {
        var info = new FileInfo(path);
        return $"{info.FullName}|{info.Length}|{info.LastWriteTimeUtc.Ticks}";
    }

    private static Dictionary<string, string> Load()
    {
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        try
        {
            lock (FileLock)
            {
                if (!File.Exists(CachePath)) return map;
                foreach (string line in File.ReadLines(CachePath))
                {
                    int tab = line.LastIndexOf('\t');
                    if (tab > 0) map[line[..tab]] = line[(tab + 1)..];
                }
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return map;
    }

    /// <summary>An input file whose hash is not cached: the first input naming it, its cache key, and every model name it has.</summary>
    internal sealed record UnhashedFile(MergeInput Input, string CacheKey, IReadOnlyList<string> Names);

    /// <summary>Adds hashes (by cache key) to the cache.</summary>
    internal static void Remember(IReadOnlyCollection<KeyValuePair<string, string>> entries)
    {
        if (entries.Count == 0) return;
        // The cache is an optimisation: failing to write it must never fail a merge.
        try
        {
            lock (FileLock)
            {
                Directory.CreateDirectory(Path.GetDirectoryName(CachePath)!);
                File.AppendAllLines(CachePath, entries.Select(e => $"{e.Key}\t{e.Value}"));
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
