using System.CommandLine;
using MergeCluster.Cluster.Telemetry;
using MergeCluster.Engine.Ledger;
using MergeCluster.Engine.Telemetry;
using MergeCluster.Merge;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster submit RECIPE`: queues a job in the ledger and prints its id; with --wait, follows it to the end.</summary>
public static class SubmitCommand
{
    public static Command Create()
    {
        var recipe = new Argument<FileInfo>("RECIPE") { Description = "recipe file; its relative paths resolve against its directory" };
        var ledger = LedgerOption.Create();
        var wait = new Option<bool>("--wait") { Description = "show progress until the job ends; exit non-zero unless it succeeded" };
        var command = new Command("submit", "submit a recipe to the cluster and print the job id");
        command.Arguments.Add(recipe);
        command.Options.Add(ledger);
        command.Options.Add(wait);
        command.SetAction(async (parse, ct) =>
        {
            var file = parse.GetValue(recipe)!;
            if (!file.Exists) throw new FileNotFoundException(null, file.FullName);
            var text = await File.ReadAllTextAsync(file.FullName, ct);
            var directory = file.DirectoryName!;
            // VALIDATION SPOT (lead): replace with the Recipe code's parse + canonical text, so bad recipes fail here.
            var canonical = text;

            await using var client = await LedgerOption.OpenClientAsync(parse.GetValue(ledger), ct);
            long id;
            using (TelemetryExport.Start("submit"))
            using (var root = MergeTelemetry.StartJob(file.FullName, out var traceParent))
            {
                id = await client.SubmitJobAsync(new JobSubmission(canonical, directory, "", traceParent), ct);
                root?.SetTag(MergeTelemetry.JobTag, id);
            }
            Console.WriteLine(id);
            return parse.GetValue(wait) ? await FollowAsync(client, id, ct) : 0;
        });
        return command;
    }

    /// <summary>Prints a progress line whenever it changes, until the job ends; 0 only when it succeeded.</summary>
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
            await ledger.WaitForWorkAsync(TimeSpan.FromMilliseconds(500), ct);
        }
    }
}
