using System.CommandLine;
using MergeCluster.Cluster.Client;
using MergeCluster.Cluster.Contracts;
using MergeCluster.Engine.Execution;
using MergeCluster.Engine.Telemetry;
using MergeCluster.Merge;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Recipes;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Cli.Commands;

/// <summary>
/// `mergecluster submit RECIPE`: submits a job to the cluster and prints its id at once; with --wait, follows it to the
/// end. `--kind distance MODEL...` and `--kind sweep RECIPE` submit the `distance` and `sweep` commands' work, with
/// their options.
/// </summary>
public static class SubmitCommand
{
    public static Command Create()
    {
        var inputs = new Argument<string[]>("RECIPE|MODEL")
        {
            Description = "recipe file (merge, sweep), its relative paths resolving against its directory as the silos see it; or the checkpoints to compare (distance)",
            Arity = ArgumentArity.OneOrMore,
        };
        var kind = new Option<string>("--kind")
        {
            Description = "merge (the recipe), distance (a distance map of the models, as `distance`), or sweep (the recipe's candidates, as `sweep`)",
            DefaultValueFactory = _ => JobKinds.Merge,
        };
        kind.AcceptOnlyFromAmong(JobKinds.Merge, JobKinds.Distance, JobKinds.Sweep);
        var baseOption = new Option<string?>("--base") { Description = "distance: reference model, listed first" };
        var componentOption = new Option<string?>("--component") { Description = "distance: components to compare, comma-separated: unet, te0, te1, vae (te for SD1); default all" };
        var blocks = new Option<bool>("--blocks") { Description = "distance: also per UNET block in supermerger naming" };
        var leaveOneOut = new Option<string?>("--leave-one-out") { Description = "sweep: for each model of this component's rule, the recipe without it" };
        var swap = new Option<string?>("--swap") { Description = "sweep: for each model holding this component, the recipe with it copied from that model" };
        var cluster = new ClusterOptions();
        var wait = new Option<bool>("--wait") { Description = "show progress until the job ends; exit non-zero unless it succeeded" };
        var shardMb = new Option<int>("--shard-mb") { Description = "input megabytes per shard (does not change the output)", DefaultValueFactory = _ => 256 };
        var noHash = new Option<bool>("--no-hash") { Description = "do not hash inputs into the output metadata" };
        var output = new Option<string?>("--output", "-o")
        {
            Description = "as the silos see it: merge, the output file overriding the recipe's (a .mecha recipe names none); distance, the directory for distances.json, the CSVs and plots (required); sweep, the candidates' directory (default: the recipe's output directory)",
        };
        var dtype = new Option<string?>("--dtype") { Description = "output dtype f16, bf16, f32 or f64, overriding the recipe's" };
        var nonFinite = new Option<NonFinitePolicy>("--nonfinite")
        {
            Description = "an output tensor with NaN or infinite values: error fails the job (nothing written); warn and keep write it (warn records the tensors on the task spans)",
            DefaultValueFactory = _ => NonFinitePolicy.Warn,
        };
        var shape = new Option<TaskShape>("--shape")
        {
            Description = "tasks per shard: fused (one task), tree (leaf, reduce and final tasks), or auto: tree only when no silo holds every model",
            DefaultValueFactory = _ => TaskShape.Auto,
        };
        var command = new Command("submit", "submit a merge, distance or sweep job to the cluster and print the job id");
        command.Arguments.Add(inputs);
        command.Options.Add(kind);
        cluster.AddTo(command);
        command.Options.Add(wait);
        command.Options.Add(shardMb);
        command.Options.Add(noHash);
        command.Options.Add(shape);
        command.Options.Add(output);
        command.Options.Add(dtype);
        command.Options.Add(nonFinite);
        command.Options.Add(baseOption);
        command.Options.Add(componentOption);
        command.Options.Add(blocks);
        command.Options.Add(leaveOneOut);
        command.Options.Add(swap);
        command.SetAction(async (parse, ct) =>
        {
            string jobKind = parse.GetValue(kind)!;
            var given = parse.GetValue(inputs)!;
            string? outputPath = parse.GetValue(output) is { } o ? Path.GetFullPath(o) : null;
            bool distance = jobKind == JobKinds.Distance, sweep = jobKind == JobKinds.Sweep;
            if (!distance && (parse.GetValue(baseOption) is not null || parse.GetValue(componentOption) is not null || parse.GetValue(blocks)))
                throw new MergeException("--base, --component and --blocks are options of --kind distance");
            if (!sweep && (parse.GetValue(leaveOneOut) is not null || parse.GetValue(swap) is not null))
                throw new MergeException("--leave-one-out and --swap are options of --kind sweep");
            // Options of the merge that the other kinds would silently ignore are refused, as the local commands would.
            if (jobKind != JobKinds.Merge && (parse.GetValue(dtype) is not null || parse.GetResult(nonFinite) is { Implicit: false }))
                throw new MergeException($"--dtype and --nonfinite are options of --kind merge, not of --kind {jobKind}");
            if (distance && parse.GetValue(noHash))
                throw new MergeException("--no-hash is an option of --kind merge and --kind sweep: a distance map records no hashes");
            if (!distance && given.Length != 1) throw new MergeException($"submit --kind {jobKind} takes one recipe, not {given.Length} arguments");

            var settings = cluster.Resolve(parse);
            // Connecting (and the JIT it takes) runs beside the recipe's parse: the two are most of a submit's latency.
            var connecting = Task.Run(() => ClusterConnection.ConnectAsync(settings, "submit", ct), ct);
            string text = "", directory = Environment.CurrentDirectory, source;
            SelectionSettings? selection = null;
            if (distance)
            {
                // Headers are read by the silos (paths checked against their data roots); the options fail here.
                _ = DistancePlan.ParseComponents(parse.GetValue(componentOption));
                if (outputPath is null) throw new MergeException("submit --kind distance needs -o DIR: where the silos write distances.json, the CSVs and the plots");
                string? basePath = parse.GetValue(baseOption) is { } b ? Path.GetFullPath(b) : null;
                selection = new SelectionSettings(JobKinds.Distance, outputPath, [.. given.Select(Path.GetFullPath)], basePath, parse.GetValue(componentOption), parse.GetValue(blocks));
                source = $"distance of {given.Length + (basePath is null ? 0 : 1)} models into {outputPath}";
            }
            else
            {
                var file = new FileInfo(given[0]);
                if (!file.Exists) throw new FileNotFoundException(null, file.FullName);
                // A regular file only, and bounded: a FIFO named as the recipe is refused instead of blocking.
                text = MergeCluster.Safetensors.RegularFile.ReadText(file.FullName, Recipe.MaxBytes, "the recipe");
                // Mistakes in the recipe itself fail here, with their line; paths are checked by the silos against their data roots.
                var parsed = Recipe.Parse(text, file.DirectoryName!, file.FullName);
                directory = file.DirectoryName!;
                source = file.FullName;
                if (sweep)
                {
                    string? loo = parse.GetValue(leaveOneOut), sw = parse.GetValue(swap);
                    if ((loo is null) == (sw is null)) throw new MergeException("submit --kind sweep needs exactly one of --leave-one-out COMPONENT or --swap COMPONENT");
                    var component = Components.Parse(loo ?? sw!);
                    selection = new SelectionSettings(JobKinds.Sweep, outputPath ?? Path.GetDirectoryName(parsed.OutputPath)!,
                        Mode: loo is not null ? "leave-one-out" : "swap", Component: component.Name());
                }
            }
            if (parse.GetValue(dtype) is { } name && !(DTypes.TryParseUser(name, out var d) && d is DType.F16 or DType.BF16 or DType.F32 or DType.F64))
                throw new MergeException($"unknown output dtype '{name}' (expected f16, bf16, f32 or f64)");
            var options = new MergeJobOptions
            {
                Shape = parse.GetValue(shape),
                ShardBytes = Math.Max(1, parse.GetValue(shardMb)) * (1L << 20),
                HashInputs = !parse.GetValue(noHash),
                Output = selection is null ? outputPath : null,
                DType = parse.GetValue(dtype),
                NonFinite = parse.GetValue(nonFinite),
            };

            await using var connection = await connecting;
            long id;
            using (var root = MergeTelemetry.StartJob(source, out var traceParent))
            {
                id = await connection.SubmitAsync(new JobSubmission(text, directory, source, options.ToSettings(), traceParent, selection));
                root?.SetTag(MergeTelemetry.JobTag, id);
            }
            Console.WriteLine(id);
            return parse.GetValue(wait) ? await FollowAsync(connection, id, ct) : 0;
        });
        return command;
    }

    /// <summary>Prints a progress line to stderr when it changes, until the job ends; 0 only when it succeeded.</summary>
    private static async Task<int> FollowAsync(ClusterConnection connection, long id, CancellationToken ct)
    {
        string? last = null;
        var started = DateTimeOffset.UtcNow;
        while (true)
        {
            JobStatus status;
            try
            {
                status = await connection.StatusAsync(id);
            }
            catch (Exception e) when (e is not MergeException)
            {
                // The job's grain is moving (its silo died) or storage is down a moment: ask again.
                Console.Error.WriteLine($"job {id}: status not available yet ({e.GetType().Name})");
                await Task.Delay(TimeSpan.FromSeconds(1), ct);
                continue;
            }
            var t = status.Tasks;
            var line = $"job {id}: {StatusCommand.StateName(status.State)}, {t.Done}/{t.Total} tasks done"
                + (t.Running > 0 ? $", {t.Running} running" : "") + (t.Failed > 0 ? $", {t.Failed} failed" : "");
            if (line != last) Console.Error.WriteLine(last = line);
            switch (status.State)
            {
                case JobPhase.Succeeded:
                    Console.Error.WriteLine($"job {id}: succeeded in {(DateTimeOffset.UtcNow - started).TotalSeconds:0.0} s");
                    return 0;
                case JobPhase.Failed or JobPhase.Cancelled:
                    throw new MergeException($"job {id} {StatusCommand.StateName(status.State)}: {status.Error}");
            }
            // A grain call, cheap enough to ask four times a second: the end is seen within a quarter second.
            await Task.Delay(TimeSpan.FromMilliseconds(250), ct);
        }
    }
}
