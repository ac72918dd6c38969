using System.Diagnostics;
using MergeCluster.Engine.Execution;
using MergeCluster.Merge.Recipes;

namespace MergeCluster.Benchmarks;

/// <summary>
/// `merge FILE... [--threads N] [--dtype f16]`: merges the files with an N-way mean and prints input GB/s and peak RSS
/// next to `cat` of the same inputs with a warm page cache, which is the I/O bound.
/// </summary>
public static class MergeThroughput
{
    public static async Task<int> RunAsync(string[] args)
    {
        int threads = Option(args, "--threads") is { } t ? int.Parse(t) : Environment.ProcessorCount;
        string dtype = Option(args, "--dtype") ?? "f16";
        var files = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i].StartsWith("--")) i++;
            else files.Add(Path.GetFullPath(args[i]));
        }
        if (files.Count < 2)
        {
            Console.Error.WriteLine("usage: merge FILE FILE... [--threads N] [--dtype f16|bf16|f32]");
            return 2;
        }
        long inputBytes = files.Sum(f => new FileInfo(f).Length);
        string dir = Path.Combine(Path.GetTempPath(), "mc-bench-" + Environment.ProcessId);
        Directory.CreateDirectory(dir);
        try
        {
            string recipePath = Path.Combine(dir, "recipe.yaml");
            File.WriteAllText(recipePath,
                "models:\n" + string.Join("\n", files.Select((f, i) => $"  m{i}: \"{f}\"")) +
                "\ncomponents:\n  all: { method: mean, models: [" + string.Join(", ", files.Select((_, i) => $"m{i}")) + "] }\n" +
                $"output: {{ path: out.safetensors, dtype: {dtype} }}\n");
            var recipe = Recipe.Load(recipePath);

            double cat = CatSeconds(files); // warms the page cache too
            cat = Math.Min(cat, CatSeconds(files));
            double best = double.MaxValue;
            for (int run = 0; run < 3; run++)
            {
                // Replacing the last run's output would time the unlink of gigabytes of it too.
                File.Delete(Path.Combine(dir, "out.safetensors"));
                var clock = Stopwatch.StartNew();
                await LocalMerge.RunAsync(recipe, new LocalMergeOptions { Threads = threads, HashInputs = false }, null, CancellationToken.None);
                best = Math.Min(best, clock.Elapsed.TotalSeconds);
            }
            double gbs = inputBytes / best / 1e9, catGbs = inputBytes / cat / 1e9;
            Console.WriteLine($"inputs:        {files.Count} files, {inputBytes / 1e9:F2} GB");
            Console.WriteLine($"merge:         {best:F2} s, {gbs:F2} GB/s input ({threads} threads)");
            Console.WriteLine($"cat (warm):    {cat:F2} s, {catGbs:F2} GB/s");
            Console.WriteLine($"ratio:         {gbs / catGbs * 100:F0}% of cat");
            Console.WriteLine($"peak RSS:      {PeakRssMb():F0} MB");
            return 0;
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    private static double CatSeconds(IEnumerable<string> files)
    {
        var psi = new ProcessStartInfo("bash", ["-c", "cat \"$@\" > /dev/null", "cat", .. files]) { UseShellExecute = false };
        var clock = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        p.WaitForExit();
        return clock.Elapsed.TotalSeconds;
    }

    /// <summary>VmHWM: the high-water mark of resident memory.</summary>
    public static double PeakRssMb()
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmHWM:")) return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1024.0;
        return double.NaN;
    }

    private static string? Option(string[] args, string name)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
    }
}
