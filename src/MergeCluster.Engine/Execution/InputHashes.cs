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
        var cache = Load();
        var files = inputs.Where(i => i.Length > 0).GroupBy(i => i.Identity).Select(g => (Input: g.First(), Id: Identity(g.First().Path), Names: g.Select(i => i.Name).ToList())).ToList();
        var result = new ConcurrentDictionary<string, string>(StringComparer.Ordinal);
        var fresh = new ConcurrentDictionary<string, string>(StringComparer.Ordinal);
        var pending = new List<(MergeInput Input, string Id, List<string> Names)>();
        foreach (var file in files)
        {
            if (cache.TryGetValue(file.Id, out string? hash)) foreach (string name in file.Names) result[name] = hash;
            else pending.Add(file);
        }
        if (pending.Count == 0) return result;
        progress?.StartHashing(pending.Sum(f => f.Input.Length));
        try
        {
            Parallel.ForEach(pending, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads), CancellationToken = ct }, file =>
            {
                string hash = ModelHashes.AutoV2(file.Input.Path, ct, progress is null ? null : progress.Hashed);
                fresh[file.Id] = hash;
                foreach (string name in file.Names) result[name] = hash;
            });
        }
        finally
        {
            // Files hashed before a cancel are kept: the next run need not read them again.
            if (!fresh.IsEmpty) Save(fresh);
        }
        return result;
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

    private static void Save(IEnumerable<KeyValuePair<string, string>> entries)
    {
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
