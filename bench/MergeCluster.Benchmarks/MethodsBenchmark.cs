using System.Diagnostics;
using System.Diagnostics.Metrics;
using MergeCluster.Engine.Execution;
using MergeCluster.Engine.Telemetry;
using MergeCluster.Merge.Recipes;
using MergeCluster.Planning;

namespace MergeCluster.Benchmarks;

/// <summary>
/// `methods BASE FILE... [--threads N] [--only m1,m2]`: every merge method on the same inputs (the first file is the
/// base of ties, dare and model_stock), each in a process of its own so its peak RSS is its own: wall time, passes over
/// the input (bytes read / the plan's input bytes) and peak RSS, next to `mean`.
/// </summary>
public static class MethodsBenchmark
{
    /// <summary>Each method's rule over models m1..mN (m0 is the base).</summary>
    private static readonly (string Name, string Rule)[] Methods =
    [
        ("mean", "method: mean"),
        ("geometric_median", "method: geometric_median"),
        ("model_stock", "method: model_stock"),
        ("ties k=0.2", "method: ties, k: 0.2"),
        ("dare p=0.9", "method: dare, probability: 0.9, ties: false"),
        ("dare+ties p=0.1 k=0.2", "method: dare, probability: 0.1, k: 0.2"),
        ("slerp", "method: slerp"),
    ];

    public static async Task<int> RunAsync(string[] args)
    {
        int threads = Option(args, "--threads") is { } t ? int.Parse(t) : Environment.ProcessorCount;
        var only = Option(args, "--only")?.Split(',', StringSplitOptions.TrimEntries);
        var files = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i].StartsWith("--")) i++;
            else files.Add(Path.GetFullPath(args[i]));
        }
        if (files.Count < 3)
        {
            Console.Error.WriteLine("usage: methods BASE FILE FILE... [--threads N] [--only mean,ties ...]");
            return 2;
        }
        Console.WriteLine($"inputs: base + {files.Count - 1} models, {files.Sum(f => new FileInfo(f).Length) / 1e9:F2} GB; {threads} threads; load {File.ReadAllText("/proc/loadavg").Trim()}");
        Console.WriteLine($"{"method",-24} {"time s",8} {"passes",7} {"GB read",8} {"peak RSS MB",12}");
        foreach (var (name, rule) in Methods)
        {
            if (only is not null && !only.Any(o => name.StartsWith(o, StringComparison.Ordinal))) continue;
            var psi = new ProcessStartInfo(Environment.ProcessPath!) { UseShellExecute = false, RedirectStandardOutput = true };
            if (!Environment.ProcessPath!.EndsWith("MergeCluster.Benchmarks", StringComparison.Ordinal))
                psi.ArgumentList.Add(typeof(MethodsBenchmark).Assembly.Location); // running under `dotnet`
            foreach (string a in new[] { "method-run", name, rule, threads.ToString() }.Concat(files)) psi.ArgumentList.Add(a);
            using var child = Process.Start(psi)!;
            string line = await child.StandardOutput.ReadToEndAsync();
            await child.WaitForExitAsync();
            if (child.ExitCode != 0) return child.ExitCode;
            Console.Write(line);
        }
        return 0;
    }

    /// <summary>The child: one merge of one method, printed as a table row.</summary>
    public static async Task<int> RunOneAsync(string[] args)
    {
        string name = args[0], rule = args[1];
        int threads = int.Parse(args[2]);
        var files = args[3..];
        string dir = Path.Combine(Path.GetTempPath(), "mc-methods-" + Environment.ProcessId);
        Directory.CreateDirectory(dir);
        try
        {
            int models = name == "slerp" ? 2 : files.Length - 1;
            string recipePath = Path.Combine(dir, "recipe.yaml");
            File.WriteAllText(recipePath,
                "models:\n" + string.Join("\n", files.Select((f, i) => $"  m{i}: \"{f}\"")) + "\nbase: m0\n" +
                $"components:\n  all: {{ {rule}, models: [{string.Join(", ", Enumerable.Range(1, models).Select(i => $"m{i}"))}] }}\n" +
                "output: { path: out.safetensors, dtype: f16 }\n");
            var recipe = Recipe.Load(recipePath);
            long planned = Planner.Create(recipe).InputBytes;

            long read = 0;
            using var listener = new MeterListener();
            // By name: the counter is published from MergeTelemetry's static initialiser, before its field is assigned.
            listener.InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == MergeTelemetry.Name && instrument.Name == "mergecluster.bytes.read") l.EnableMeasurementEvents(instrument);
            };
            listener.SetMeasurementEventCallback<long>((_, value, _, _) => Interlocked.Add(ref read, value));
            listener.Start();
            var clock = Stopwatch.StartNew();
            await LocalMerge.RunAsync(recipe, new LocalMergeOptions { Threads = threads, HashInputs = false }, null, CancellationToken.None);
            double seconds = clock.Elapsed.TotalSeconds;
            Console.WriteLine($"{name,-24} {seconds,8:F1} {(double)read / planned,7:F2} {read / 1e9,8:F1} {MergeThroughput.PeakRssMb(),12:F0}");
            return 0;
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    private static string? Option(string[] args, string name)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
    }
}
