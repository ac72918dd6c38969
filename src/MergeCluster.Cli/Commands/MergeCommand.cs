using MergeCluster.Cluster;
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
        var fromMetadata = new Option<FileInfo?>("--from-metadata") { Description = "Replay the recipe stored in a merged file's metadata (needs -o); every input it reads is checked against its recorded hash" };
        var modelsDir = new Option<DirectoryInfo?>("--models-dir") { Description = "With --from-metadata: where the recipe's model paths resolve (default: the directory of the replayed file)" };
        var unverified = new Option<bool>("--unverified") { Description = "With --from-metadata: replay a file that records no input hashes (merged with --no-hash), which cannot be checked" };
        var shardMb = new Option<int>("--shard-mb") { Description = "Most input megabytes per shard (does not change the output)", DefaultValueFactory = _ => 256 };
        var noHash = new Option<bool>("--no-hash") { Description = "Do not hash inputs into the output metadata (the merge can then not be verified on replay)" };
        var hashing = new Option<InputHashing>("--hashing")
        {
            Description = "When inputs missing from the hash cache are hashed: first (a pass before the merge), or along (from the merge's own reads, so each input is read once: for inputs on a slow disk)",
            DefaultValueFactory = _ => InputHashing.First,
        };
        var nonFinite = new Option<NonFinitePolicy>("--nonfinite")
        {
            Description = "An output tensor with NaN or infinite values: warn (name it and the inputs it came from), error (write nothing), keep (say nothing)",
            DefaultValueFactory = _ => NonFinitePolicy.Warn,
        };
        var dtype = new Option<string?>("--dtype") { Description = "Output dtype f16, bf16, f32 or f64, overriding the recipe's (a .mecha recipe names none: f16)" };

        var command = new Command("merge", "Merge checkpoints component by component as a recipe says, exactly (float64 sums, rounded once)")
        {
            recipeArg, output, threads, dryRun, fromMetadata, modelsDir, unverified, shardMb, noHash, hashing, nonFinite, dtype,
        };
        command.SetAction(async (parse, ct) =>
        {
            var replay = parse.GetValue(fromMetadata);
            var (recipe, replayHeader, outDType) = LoadRecipe(parse.GetValue(recipeArg), replay, parse.GetValue(output), parse.GetValue(modelsDir));
            if (parse.GetValue(dtype) is { } dtypeName)
            {
                if (!DTypes.TryParseUser(dtypeName, out var d) || d is not (DType.F16 or DType.BF16 or DType.F32 or DType.F64))
                    throw new MergeException($"unknown output dtype '{dtypeName}' (expected f16, bf16, f32 or f64)");
                recipe = recipe.WithOutputDType(d);
                outDType = d;
            }
            string? outPath = parse.GetValue(output)?.FullName;
            int t = Math.Max(1, parse.GetValue(threads));
            long maxShard = (long)Math.Max(1, parse.GetValue(shardMb)) << 20;
            // Planning refuses what would damage a file before anything is written: an output that is an input
            // under another name, a pickle output, a header over the readers' limit.
            var plan = Planner.Create(recipe, new PlanOptions { OutputPath = outPath, OutputDType = outDType });
            if (parse.GetValue(dryRun))
            {
                PrintPlan(Planner.Reshard(plan, LocalMerge.ShardBytesFor(plan.InputBytes, t, maxShard)));
                return 0;
            }

            var found = new System.Collections.Concurrent.ConcurrentQueue<NonFiniteTensor>();
            var options = new LocalMergeOptions
            {
                Threads = t,
                OutputPath = outPath,
                ShardBytes = maxShard,
                HashInputs = !parse.GetValue(noHash),
                Hashing = parse.GetValue(hashing),
                Plan = plan,
                DType = outDType,
                NonFinite = parse.GetValue(nonFinite),
                OnNonFinite = found.Enqueue,
            };
            var progress = new MergeProgress();
            var clock = Stopwatch.StartNew();
            await ProgressDisplay.RunAsync(progress, plan.InputBytes, async () =>
            {
                if (replay is not null)
                    await Task.Run(() => VerifyReplay(replay.FullName, replayHeader!, plan, t, parse.GetValue(unverified), progress, ct), ct);
                await LocalMerge.RunAsync(recipe, options, progress, ct);
            }, ct);
            double seconds = clock.Elapsed.TotalSeconds;
            Console.WriteLine($"wrote {Terminal.Escape(plan.OutputPath)} ({Units.Bytes(plan.OutputBytes)}, {plan.Tensors.Length} tensors) in {seconds:F1} s; read {Units.Bytes(progress.InputBytes)} at {Units.Bytes((long)(progress.InputBytes / Math.Max(seconds, 1e-9)))}/s");
            WarnNonFinite(plan.OutputPath, found.ToList());
            return 0;
        });
        return command;
    }

    /// <summary>
    /// The recipe to run: a file, or the one a merged file's metadata carries. A replayed recipe's model paths resolve
    /// against <paramref name="modelsDir"/>, else the replayed file's directory: the maker's directories are not
    /// recorded. A dtype chosen on the command line is not in the recipe text; the metadata carries it.
    /// </summary>
    private static (Recipe Recipe, SafetensorsHeader? Replayed, DType? DType) LoadRecipe(FileInfo? recipeFile, FileInfo? fromMetadata, FileInfo? output, DirectoryInfo? modelsDir)
    {
        if (fromMetadata is not null)
        {
            if (recipeFile is not null) throw new MergeException("give either RECIPE or --from-metadata, not both");
            if (output is null) throw new MergeException($"{fromMetadata.FullName}: --from-metadata needs -o OUT for the replayed file");
            var header = SafetensorsFile.ReadHeader(fromMetadata.FullName, out _);
            if (!header.Metadata.TryGetValue(MergeMetadata.Recipe, out string? text))
                throw new MergeException($"{fromMetadata.FullName}: no MergeCluster recipe in its metadata (was it made by mergecluster merge?)");
            string directory = modelsDir?.FullName ?? fromMetadata.DirectoryName!;
            var replayed = Recipe.Parse(text, directory, $"{fromMetadata.FullName} (recipe in metadata)");
            if (!header.Metadata.TryGetValue(MergeMetadata.OutputDType, out string? d) || !DTypes.TryParseUser(d, out var dt)) return (replayed, header, null);
            return (replayed.WithOutputDType(dt), header, dt);
        }
        if (modelsDir is not null) throw new MergeException("--models-dir applies to --from-metadata; a recipe file's paths resolve against its own directory");
        if (recipeFile is null) throw new MergeException("merge needs a RECIPE file (or --from-metadata FILE -o OUT)");
        return (Recipe.Load(recipeFile.FullName), null, null);
    }

    /// <summary>
    /// A replay is only bit-identical if its inputs are, and only trustworthy if the recipe and the recorded hashes
    /// belong together: every model the recipe reads must have a recorded hash that matches it now, and every recorded
    /// hash must be of a model it reads (a model added to, or dropped from, the embedded recipe is caught).
    /// </summary>
    private static void VerifyReplay(string source, SafetensorsHeader header, MergePlan plan, int threads, bool unverified, MergeProgress progress, CancellationToken ct)
    {
        if (!header.Metadata.TryGetValue(MergeMetadata.Inputs, out string? json))
        {
            if (!unverified)
                throw new MergeException($"{source}: its metadata records no input hashes (merged with --no-hash), so this replay cannot be verified; add --unverified to replay it anyway");
            Console.Error.WriteLine($"warning: {Terminal.Escape(source)}: replaying without verification: it records no input hashes");
            return;
        }
        var recorded = MergeMetadata.ParseInputs(json, source);
        var read = plan.Inputs.Where(i => i.Length > 0).ToList();
        if (read.FirstOrDefault(i => !recorded.ContainsKey(i.Name)) is { } unrecorded)
            throw new MergeException($"{source}: the recipe in its metadata reads model '{unrecorded.Name}' ({unrecorded.Path}), for which no hash is recorded; the recipe and its recorded inputs do not belong together, so the replay stops");
        if (recorded.Keys.FirstOrDefault(name => read.All(i => i.Name != name)) is { } extra)
            throw new MergeException($"{source}: a hash is recorded for model '{extra}', which the recipe in its metadata does not read; the recipe and its recorded inputs do not belong together, so the replay stops");
        var now = InputHashes.Compute(read, threads, ct, progress);
        var changed = read.Where(i => recorded[i.Name] != now[i.Name])
            .Select(i => $"{i.Name} ({i.Path}: recorded {recorded[i.Name]}, now {now[i.Name]})")
            .ToList();
        if (changed.Count > 0)
            throw new MergeException($"{source}: inputs changed since the merge: {string.Join("; ", changed)}");
    }

    /// <summary>One line per tensor with NaN or infinite values (the first ten), naming where they came from.</summary>
    private static void WarnNonFinite(string output, IReadOnlyList<NonFiniteTensor> found)
    {
        const int shown = 10;
        foreach (var t in found.Take(shown))
            Console.Error.WriteLine($"warning: {Terminal.Escape(output)}: tensor '{Terminal.Escape(t.Key)}' has NaN or infinite values: {Terminal.Escape(t.Cause)}");
        if (found.Count > shown) Console.Error.WriteLine($"warning: {Terminal.Escape(output)}: and {found.Count - shown} more tensors with NaN or infinite values (inspect --scan lists them)");
    }

    internal static void PrintPlan(MergePlan plan)
    {
        var recipe = plan.Recipe;
        Console.WriteLine($"recipe:  {Terminal.Escape(recipe.Source)}");
        Console.WriteLine($"output:  {Terminal.Escape(plan.OutputPath)} ({recipe.Output.DType.Name()}, {plan.Tensors.Length} tensors, {Units.Bytes(plan.OutputBytes)})");
        Console.WriteLine($"read:    {Units.Bytes(plan.InputBytes)} from {plan.Inputs.Count(i => i.Length > 0)} models in {plan.Shards.Length} shards; reduction tree of {plan.GroupCount} group(s) of {recipe.ReduceGroup}");
        if (recipe.Base is not null) Console.WriteLine($"base:    {Terminal.Escape(recipe.Base)}");
        var table = new Table().Border(HumanConsole.Border).AddColumns("component", "method", "models", "keys", "output", "read");
        foreach (var c in plan.Components)
            table.AddRow(new Text(c.Component.Name()), new Text(Terminal.Escape(c.Method)), new Text(Terminal.Escape($"{c.Models.Length}: {string.Join(", ", c.Models)}")),
                new Text(c.Keys.ToString()), new Text(Units.Bytes(c.OutputBytes)), new Text(Units.Bytes(c.InputBytes)));
        HumanConsole.Create().Write(table);
        if (plan.Missing.IsEmpty)
            Console.WriteLine("missing: none (every model has every key it is merged on)");
        else
        {
            Console.WriteLine("missing keys:");
            foreach (var m in plan.Missing)
                Console.WriteLine($"  {Terminal.Escape(m.Model)}: {m.Keys} {m.Component.Name()} keys {Terminal.Escape(m.Resolution)} (e.g. {Terminal.Escape(string.Join(", ", m.Examples))})");
        }
    }
}
