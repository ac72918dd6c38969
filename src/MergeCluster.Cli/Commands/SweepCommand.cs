using System.CommandLine;
using System.Diagnostics;
using MergeCluster.Cluster;
using MergeCluster.Engine.Execution;
using MergeCluster.Engine.Selection;
using MergeCluster.Merge;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Recipes;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster sweep`: every leave-one-out or swap candidate of a recipe, as checkpoints, from one read of the inputs.</summary>
public static class SweepCommand
{
    public static Command Create()
    {
        var recipeArg = new Argument<FileInfo>("RECIPE") { Description = "YAML recipe to vary" };
        var leaveOneOut = new Option<string?>("--leave-one-out") { Description = "For each model of this component's rule, the recipe without it: DIR/<recipe>-minus-<model>.safetensors" };
        var swap = new Option<string?>("--swap") { Description = "For each model holding this component, the recipe with it copied from that model: DIR/<recipe>-<component>-<model>.safetensors" };
        var output = new Option<DirectoryInfo?>("--output", "-o") { Description = "Directory for the candidates (default: the recipe's output directory)" };
        var threads = new Option<int>("--threads", "-j") { Description = "Worker threads", DefaultValueFactory = _ => Environment.ProcessorCount };
        var noHash = new Option<bool>("--no-hash") { Description = "Do not hash inputs into the candidates' metadata (they can then not be verified on replay)" };

        var command = new Command("sweep", "Write every candidate of a leave-one-out or swap round as a checkpoint, each bit-identical to its own merge, from one read of the inputs")
        {
            recipeArg, leaveOneOut, swap, output, threads, noHash,
        };
        command.SetAction(async (parse, ct) =>
        {
            string? loo = parse.GetValue(leaveOneOut), sw = parse.GetValue(swap);
            if ((loo is null) == (sw is null)) throw new MergeException("sweep needs exactly one of --leave-one-out COMPONENT or --swap COMPONENT");
            var mode = loo is not null ? SweepMode.LeaveOneOut : SweepMode.Swap;
            var component = Components.Parse(loo ?? sw!);
            var recipe = Recipe.Load(parse.GetValue(recipeArg)!.FullName);
            string dir = parse.GetValue(output)?.FullName ?? Path.GetDirectoryName(recipe.OutputPath)!;
            int t = Math.Max(1, parse.GetValue(threads));

            var clock = Stopwatch.StartNew();
            var progress = new MergeProgress();
            SweepJob? planned = null;
            // Planning and hashing run inside the display (hashing 50 inputs takes minutes, and Ctrl-C must stop it).
            await ProgressDisplay.RunAsync(progress, () => planned?.InputBytes ?? 0, async () =>
            {
                planned = SweepJob.Create(recipe, mode, component, dir, !parse.GetValue(noHash), t, progress: progress, ct: ct);
                await planned.RunAsync(t, progress, ct);
            }, ct, "sweep");
            var job = planned!;
            double seconds = clock.Elapsed.TotalSeconds;
            foreach (var c in job.Candidates)
                Console.WriteLine($"wrote {Terminal.Escape(c.Plan.OutputPath)} ({Units.Bytes(c.Plan.OutputBytes)}): {component.Name()} {(mode == SweepMode.LeaveOneOut ? "without" : "from")} {Terminal.Escape(c.Model)}");
            if (!job.Skipped.IsEmpty) Console.WriteLine($"skipped (no {component.Name()} keys): {Terminal.Escape(string.Join(", ", job.Skipped))}");
            Console.WriteLine($"sweep: {job.Candidates.Length} candidates ({Units.Bytes(job.OutputBytes)}) in {seconds:F1} s; read {Units.Bytes(progress.InputBytes)} once at {Units.Bytes((long)(progress.InputBytes / Math.Max(seconds, 1e-9)))}/s");
            return 0;
        });
        return command;
    }
}
