using System.CommandLine;
using System.Diagnostics;
using MergeCluster.Engine.Execution;
using MergeCluster.Planning;
using MergeCluster.Merge;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Recipes;
using MergeCluster.Safetensors;
using Spectre.Console;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster merge`: runs a recipe on this machine (the embedded default), or replays one from a merged file.</summary>
public static class MergeCommand
{
    public static Command Create()
    {
        var recipeArg = new Argument<FileInfo?>("RECIPE") { Description = "Recipe: YAML, or sd-mecha .mecha", Arity = ArgumentArity.ZeroOrOne };
        var output = new Option<FileInfo?>("--output", "-o") { Description = "Output file (overrides the recipe's output.path)" };
        var threads = new Option<int>("--threads", "-j") { Description = "Worker threads", DefaultValueFactory = _ => Environment.ProcessorCount };
        var dryRun = new Option<bool>("--dry-run") { Description = "Print the plan (components, models, keys filled from the base, sizes) and stop" };
        var fromMetadata = new Option<FileInfo?>("--from-metadata") { Description = "Replay the recipe stored in a merged file's metadata (needs -o)" };
        var shardMb = new Option<int>("--shard-mb") { Description = "Most input megabytes per shard (does not change the output)", DefaultValueFactory = _ => 256 };
        var noHash = new Option<bool>("--no-hash") { Description = "Do not hash inputs into the output metadata (the merge can then not be verified on replay)" };
        var dtype = new Option<string?>("--dtype") { Description = "Output dtype f16, bf16, f32 or f64, overriding the recipe's (a .mecha recipe names none: f16)" };

        var command = new Command("merge", "Merge checkpoints component by component as a recipe says, exactly (float64 sums, rounded once)")
        {
            recipeArg, output, threads, dryRun, fromMetadata, shardMb, noHash, dtype,
        };
        command.SetAction(async (parse, ct) =>
        {
            var recipe = LoadRecipe(parse.GetValue(recipeArg), parse.GetValue(fromMetadata), parse.GetValue(output), out DType? outDType);
            if (parse.GetValue(dtype) is { } dtypeName)
            {
                if (!DTypes.TryParseUser(dtypeName, out var d) || d is not (DType.F16 or DType.BF16 or DType.F32 or DType.F64))
                    throw new MergeException($"unknown output dtype '{dtypeName}' (expected f16, bf16, f32 or f64)");
                recipe = recipe.WithOutputDType(d);
                outDType = d;
            }
            string? outPath = parse.GetValue(output)?.FullName;
            int t = Math.Max(1, parse.GetValue(threads));
            if (parse.GetValue(dryRun))
            {
                var probe = Planner.Create(recipe, new PlanOptions { OutputPath = outPath });
                PrintPlan(Planner.Create(recipe, new PlanOptions { OutputPath = outPath, OutputDType = outDType, ShardBytes = LocalMerge.ShardBytesFor(probe.InputBytes, t, (long)parse.GetValue(shardMb) << 20) }));
                return 0;
            }
            var plan = Planner.Create(recipe, new PlanOptions { OutputPath = outPath, OutputDType = outDType });
            if (parse.GetValue(fromMetadata) is { } source) VerifyInputs(source.FullName, plan, t);

            var options = new LocalMergeOptions
            {
                Threads = t,
                OutputPath = outPath,
                ShardBytes = (long)parse.GetValue(shardMb) << 20,
                HashInputs = !parse.GetValue(noHash),
                DType = outDType,
                InputBytes = plan.InputBytes,
            };
            var progress = new MergeProgress();
            var clock = Stopwatch.StartNew();
            await ProgressDisplay.RunAsync(progress, plan.InputBytes, () => LocalMerge.RunAsync(recipe, options, progress, ct), ct);
            double seconds = clock.Elapsed.TotalSeconds;
            Console.WriteLine($"wrote {plan.OutputPath} ({Units.Bytes(plan.OutputBytes)}, {plan.Tensors.Length} tensors) in {seconds:F1} s; read {Units.Bytes(progress.InputBytes)} at {Units.Bytes((long)(progress.InputBytes / Math.Max(seconds, 1e-9)))}/s");
            return 0;
        });
        return command;
    }


    private static Recipe LoadRecipe(FileInfo? recipeFile, FileInfo? fromMetadata, FileInfo? output, out DType? dtype)
    {
        dtype = null;
        if (fromMetadata is not null)
        {
            if (recipeFile is not null) throw new MergeException("give either RECIPE or --from-metadata, not both");
            if (output is null) throw new MergeException($"{fromMetadata.FullName}: --from-metadata needs -o OUT for the replayed file");
            var header = SafetensorsFile.ReadHeader(fromMetadata.FullName, out _);
            if (!header.Metadata.TryGetValue(MergeMetadata.Recipe, out string? text) || !header.Metadata.TryGetValue(MergeMetadata.RecipeDirectory, out string? dir))
                throw new MergeException($"{fromMetadata.FullName}: no MergeCluster recipe in its metadata (was it made by mergecluster merge?)");
            var replayed = Recipe.Parse(text, dir, $"{fromMetadata.FullName} (recipe in metadata)");
            // A dtype chosen on the command line is not in the recipe text; the metadata carries it.
            if (!header.Metadata.TryGetValue(MergeMetadata.OutputDType, out string? d) || !DTypes.TryParseUser(d, out var dt)) return replayed;
            dtype = dt;
            return replayed.WithOutputDType(dt);
        }
        if (recipeFile is null) throw new MergeException("merge needs a RECIPE file (or --from-metadata FILE -o OUT)");
        return Recipe.Load(recipeFile.FullName);
    }

    /// <summary>A replay is only bit-identical if the inputs are: every input whose hash changed is named.</summary>
    private static void VerifyInputs(string source, MergePlan plan, int threads)
    {
        var header = SafetensorsFile.ReadHeader(source, out _);
        if (!header.Metadata.TryGetValue(MergeMetadata.Inputs, out string? json))
            throw new MergeException($"{source}: its metadata records no input hashes (merged with --no-hash), so a replay cannot be verified");
        var recorded = MergeMetadata.ParseInputs(json);
        var now = InputHashes.Compute(plan.Inputs, threads);
        var changed = recorded.Where(kv => !now.TryGetValue(kv.Key, out string? h) || h != kv.Value)
            .Select(kv => $"{kv.Key} ({plan.Inputs.FirstOrDefault(i => i.Name == kv.Key)?.Path}: recorded {kv.Value}, now {now.GetValueOrDefault(kv.Key, "missing")})")
            .ToList();
        if (changed.Count > 0)
            throw new MergeException($"{source}: inputs changed since the merge: {string.Join("; ", changed)}");
    }

    internal static void PrintPlan(MergePlan plan)
    {
        var recipe = plan.Recipe;
        Console.WriteLine($"recipe:  {recipe.Source}");
        Console.WriteLine($"output:  {plan.OutputPath} ({recipe.Output.DType.Name()}, {plan.Tensors.Length} tensors, {Units.Bytes(plan.OutputBytes)})");
        Console.WriteLine($"read:    {Units.Bytes(plan.InputBytes)} from {plan.Inputs.Count(i => i.Length > 0)} models in {plan.Shards.Length} shards; reduction tree of {plan.GroupCount} group(s) of {recipe.ReduceGroup}");
        if (recipe.Base is not null) Console.WriteLine($"base:    {recipe.Base}");
        var table = new Table().Border(HumanConsole.Border).AddColumns("component", "method", "models", "keys", "output", "read");
        foreach (var c in plan.Components)
            table.AddRow(c.Component.Name(), Markup.Escape(c.Method), Markup.Escape($"{c.Models.Length}: {string.Join(", ", c.Models)}"), c.Keys.ToString(), Units.Bytes(c.OutputBytes), Units.Bytes(c.InputBytes));
        HumanConsole.Create().Write(table);
        if (plan.Missing.IsEmpty)
            Console.WriteLine("missing: none (every model has every key it is merged on)");
        else
        {
            Console.WriteLine("missing keys:");
            foreach (var m in plan.Missing)
                Console.WriteLine($"  {m.Model}: {m.Keys} {m.Component.Name()} keys {m.Resolution} (e.g. {string.Join(", ", m.Examples)})");
        }
    }
}
