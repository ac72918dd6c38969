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

    /// <summary>AutoV2 of each named input, hashed in parallel where not cached.</summary>
    public static IReadOnlyDictionary<string, string> Compute(IEnumerable<MergeInput> inputs, int threads)
    {
        var cache = Load();
        var result = new ConcurrentDictionary<string, string>(StringComparer.Ordinal);
        var fresh = new ConcurrentDictionary<string, string>(StringComparer.Ordinal);
        Parallel.ForEach(inputs.Where(i => i.Length > 0), new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads) }, input =>
        {
            string id = Identity(input.Path);
            if (!cache.TryGetValue(id, out string? hash))
            {
                hash = ModelHashes.AutoV2(input.Path);
                fresh[id] = hash;
            }
            result[input.Name] = hash;
        });
        if (!fresh.IsEmpty) Save(fresh);
        return result;
    }

    /// <summary>The AutoV2 of one file, through the cache.</summary>
    public static string Of(string path)
    {
        string id = Identity(path);
        if (Load().TryGetValue(id, out string? hash)) return hash;
        hash = ModelHashes.AutoV2(path);
        Save(new Dictionary<string, string> { [id] = hash });
        return hash;
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
