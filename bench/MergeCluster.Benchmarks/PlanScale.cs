using System.Diagnostics;
using System.Text;
using MergeCluster.Merge.Recipes;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Benchmarks;

/// <summary>
/// Planning at scale, the two cases of issue 10: one header of 1,000,000 tiny tensors merged with itself, and one
/// SD1.5-sized file named by 1,000 models. Prints wall time, GC pauses and the peak managed and resident memory
/// against the header's size; planning should be linear in the headers, with memory proportional to them.
/// </summary>
public static class PlanScale
{
    public static int Run(string[] args)
    {
        string dir = args.Length > 0 ? args[0] : Path.Combine(Path.GetTempPath(), "mergecluster-plan-bench");
        int tensors = args.Length > 1 ? int.Parse(args[1]) : 1_000_000;
        int names = args.Length > 2 ? int.Parse(args[2]) : 1_000;
        Directory.CreateDirectory(dir);

        string big = Path.Combine(dir, "tensors.safetensors");
        if (!File.Exists(big))
        {
            var specs = Enumerable.Range(0, tensors).Select(i => new TensorSpec($"model.diffusion_model.b{i}", DType.F32, [1])).ToList();
            using var writer = SafetensorsWriter.Create(big, SafetensorsLayout.Create(specs, null));
            writer.Commit();
        }
        File.WriteAllText(Path.Combine(dir, "tensors.yaml"), "models:\n  a: tensors.safetensors\n  b: tensors.safetensors\ncomponents:\n  all: { method: mean, models: [a, b] }\noutput: out.safetensors\n");
        Measure($"{tensors:N0} tensors, 2 models", Path.Combine(dir, "tensors.yaml"), big);

        string small = Path.Combine(dir, "sd15.safetensors");
        if (!File.Exists(small))
        {
            var specs = MergeCluster.Merge.Architecture.ModelArchitecture.Sd15.Keys.Select(k => new TensorSpec(k.Key, DType.F16, [16])).ToList();
            using var writer = SafetensorsWriter.Create(small, SafetensorsLayout.Create(specs, null));
            writer.Commit();
        }
        var recipe = new StringBuilder("models:\n");
        for (int i = 0; i < names; i++) recipe.Append($"  m{i}: sd15.safetensors\n");
        recipe.Append("components:\n  all: { method: mean, models: [").AppendJoin(", ", Enumerable.Range(0, names).Select(i => $"m{i}")).Append("] }\noutput: out.safetensors\n");
        File.WriteAllText(Path.Combine(dir, "names.yaml"), recipe.ToString());
        Measure($"{names:N0} names for one SD1.5 file", Path.Combine(dir, "names.yaml"), small);
        return 0;
    }

    private static void Measure(string label, string recipe, string file)
    {
        long header = SafetensorsFile.ReadHeader(file, out _).HeaderLength;
        GC.Collect();
        var pause = GC.GetTotalPauseDuration();
        long before = GC.GetTotalAllocatedBytes();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        var clock = Stopwatch.StartNew();
        var plan = Planner.Create(Recipe.Load(recipe));
        var elapsed = clock.Elapsed;
        cpu = Process.GetCurrentProcess().TotalProcessorTime - cpu;
        long live = GC.GetTotalMemory(forceFullCollection: true);
        GC.KeepAlive(plan);
        Console.WriteLine($"{label}: planned {plan.Tensors.Length:N0} tensors in {elapsed.TotalSeconds:F2} s, {cpu.TotalSeconds:F2} s of CPU (GC pauses {(GC.GetTotalPauseDuration() - pause).TotalSeconds:F2} s); " +
            $"header {header / 1e6:F1} MB, plan holds {live / 1e6:F0} MB live ({(double)live / header:F1}x the header), allocated {(GC.GetTotalAllocatedBytes() - before) / 1e6:F0} MB, " +
            $"peak RSS {Process.GetCurrentProcess().PeakWorkingSet64 / 1e6:F0} MB");
    }
}
