using System.CommandLine;
using MergeCluster.Cluster.Telemetry;
using MergeCluster.Engine.Ledger;
using MergeCluster.Engine.Telemetry;
using MergeCluster.Engine.Execution;
using MergeCluster.Merge;
using MergeCluster.Merge.Recipes;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster submit RECIPE`: queues a job in the ledger and prints its id; with --wait, follows it to the end.</summary>
public static class SubmitCommand
{
    public static Command Create()
    {
        var recipe = new Argument<FileInfo>("RECIPE") { Description = "recipe file; its relative paths resolve against its directory" };
        var ledger = LedgerOption.Create();
        var wait = new Option<bool>("--wait") { Description = "show progress until the job ends; exit non-zero unless it succeeded" };
        var shardMb = new Option<int>("--shard-mb") { Description = "input megabytes per shard (does not change the output)", DefaultValueFactory = _ => 256 };
        var noHash = new Option<bool>("--no-hash") { Description = "do not hash inputs into the output metadata" };
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
        // Only the cluster tests' file-writing engine takes recipes that are not merge recipes.
        var engine = new Option<string>("--engine") { Hidden = true, DefaultValueFactory = _ => "merge" };
        var command = new Command("submit", "submit a recipe to the cluster and print the job id");
        command.Arguments.Add(recipe);
        command.Options.Add(ledger);
        command.Options.Add(wait);
        command.Options.Add(shardMb);
        command.Options.Add(noHash);
        command.Options.Add(shape);
        command.Options.Add(nonFinite);
        command.Options.Add(engine);
        command.SetAction(async (parse, ct) =>
        {
            var file = parse.GetValue(recipe)!;
            if (!file.Exists) throw new FileNotFoundException(null, file.FullName);
            bool follow = parse.GetValue(wait);
            // Connecting (and the JIT it takes) runs beside the recipe's parse: the two are most of a submit's latency.
            // A recipe error still wins, and the process exits with the connection.
            var opening = Task.Run(() => LedgerOption.OpenClientAsync(parse.GetValue(ledger), listen: follow, ct), ct);
            var text = MergeCluster.Safetensors.RegularFile.ReadText(file.FullName, Recipe.MaxBytes, "the recipe");
            var directory = file.DirectoryName!;
            string options = "";
            if (parse.GetValue(engine) == "merge")
            {
                // Mistakes in the recipe itself fail here, with their line; paths are checked by the silos against their data roots.
                _ = Recipe.Parse(text, directory, file.FullName);
                options = new MergeJobOptions { Shape = parse.GetValue(shape), ShardBytes = Math.Max(1, parse.GetValue(shardMb)) * (1L << 20), HashInputs = !parse.GetValue(noHash), NonFinite = parse.GetValue(nonFinite) }.ToJson();
            }

            await using var client = await opening;
            long id;
            using (TelemetryExport.Start("submit"))
            using (var root = MergeTelemetry.StartJob(file.FullName, out var traceParent))
            {
                id = await client.SubmitJobAsync(new JobSubmission(text, directory, options, traceParent), ct);
                root?.SetTag(MergeTelemetry.JobTag, id);
            }
            Console.WriteLine(id);
            return follow ? await FollowAsync(client, id, ct) : 0;
        });
        return command;
    }

    /// <summary>Prints a progress line when it changes (checked each second), until the job ends; 0 only when it succeeded.</summary>
    private static async Task<int> FollowAsync(ILedger ledger, long id, CancellationToken ct)
    {
        string? last = null;
        var started = DateTimeOffset.UtcNow;
        while (true)
        {
            var job = await ledger.GetJobAsync(id, ct) ?? throw new MergeException($"job {id}: vanished from the ledger");
            var counts = await ledger.CountTasksAsync(id, ct);
            var line = $"job {id}: {job.State.ToString().ToLowerInvariant()}, {counts.Done}/{counts.Total} tasks done"
                + (counts.Leased > 0 ? $", {counts.Leased} running" : "") + (counts.Failed > 0 ? $", {counts.Failed} failed" : "");
            if (line != last) Console.Error.WriteLine(last = line);
            switch (job.State)
            {
                case JobState.Succeeded:
                    Console.Error.WriteLine($"job {id}: succeeded in {(DateTimeOffset.UtcNow - started).TotalSeconds:0.0} s");
                    return 0;
                case JobState.Failed or JobState.Cancelled:
                    throw new MergeException($"job {id} {job.State.ToString().ToLowerInvariant()}: {job.Error}");
            }
            // Progress once a second, the end at once: waking on every task's completion would cost two queries per
            // task, and the CPU they take (a client tiering up Npgsql) is taken from the silos on a shared machine.
            await ledger.WaitForJobChangeAsync(TimeSpan.FromSeconds(1), ct);
        }
    }
}
