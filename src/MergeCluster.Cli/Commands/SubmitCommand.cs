using System.CommandLine;
using MergeCluster.Cluster.Client;
using MergeCluster.Cluster.Contracts;
using MergeCluster.Engine.Execution;
using MergeCluster.Engine.Telemetry;
using MergeCluster.Merge;
using MergeCluster.Merge.Recipes;
using MergeCluster.Safetensors;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster submit RECIPE`: submits a job to the cluster and prints its id at once; with --wait, follows it to the end.</summary>
public static class SubmitCommand
{
    public static Command Create()
    {
        var recipe = new Argument<FileInfo>("RECIPE") { Description = "recipe file; its relative paths resolve against its directory (as the silos see it)" };
        var cluster = new ClusterOptions();
        var wait = new Option<bool>("--wait") { Description = "show progress until the job ends; exit non-zero unless it succeeded" };
        var shardMb = new Option<int>("--shard-mb") { Description = "input megabytes per shard (does not change the output)", DefaultValueFactory = _ => 256 };
        var noHash = new Option<bool>("--no-hash") { Description = "do not hash inputs into the output metadata" };
        var output = new Option<FileInfo?>("--output", "-o") { Description = "output file as the silos see it, overriding the recipe's (a .mecha recipe names none)" };
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
        var command = new Command("submit", "submit a recipe to the cluster and print the job id");
        command.Arguments.Add(recipe);
        cluster.AddTo(command);
        command.Options.Add(wait);
        command.Options.Add(shardMb);
        command.Options.Add(noHash);
        command.Options.Add(shape);
        command.Options.Add(output);
        command.Options.Add(dtype);
        command.Options.Add(nonFinite);
        command.SetAction(async (parse, ct) =>
        {
            var file = parse.GetValue(recipe)!;
            if (!file.Exists) throw new FileNotFoundException(null, file.FullName);
            var settings = cluster.Resolve(parse);
            // Connecting (and the JIT it takes) runs beside the recipe's parse: the two are most of a submit's latency.
            var connecting = Task.Run(() => ClusterConnection.ConnectAsync(settings, "submit", ct), ct);
            // A regular file only, and bounded: a FIFO named as the recipe is refused instead of blocking.
            var text = MergeCluster.Safetensors.RegularFile.ReadText(file.FullName, Recipe.MaxBytes, "the recipe");
            // Mistakes in the recipe itself fail here, with their line; paths are checked by the silos against their data roots.
            _ = Recipe.Parse(text, file.DirectoryName!, file.FullName);
            if (parse.GetValue(dtype) is { } name && !(DTypes.TryParseUser(name, out var d) && d is DType.F16 or DType.BF16 or DType.F32 or DType.F64))
                throw new MergeException($"unknown output dtype '{name}' (expected f16, bf16, f32 or f64)");
            var options = new MergeJobOptions
            {
                Shape = parse.GetValue(shape),
                ShardBytes = Math.Max(1, parse.GetValue(shardMb)) * (1L << 20),
                HashInputs = !parse.GetValue(noHash),
                Output = parse.GetValue(output)?.FullName,
                DType = parse.GetValue(dtype),
                NonFinite = parse.GetValue(nonFinite),
            };

            await using var connection = await connecting;
            long id;
            using (var root = MergeTelemetry.StartJob(file.FullName, out var traceParent))
            {
                id = await connection.SubmitAsync(new JobSubmission(text, file.DirectoryName!, file.FullName, options.ToSettings(), traceParent));
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
