using System.CommandLine;
using MergeCluster.Engine.Ledger;
using MergeCluster.Merge;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster cancel JOB`: stops a queued or running job; its coordinator cleans up its scratch files.</summary>
public static class CancelCommand
{
    public static Command Create()
    {
        var job = new Argument<long>("JOB") { Description = "job id" };
        var ledger = LedgerOption.Create();
        var command = new Command("cancel", "cancel a queued or running job");
        command.Arguments.Add(job);
        command.Options.Add(ledger);
        command.SetAction(async (parse, ct) =>
        {
            long id = parse.GetValue(job);
            await using var client = await LedgerOption.OpenClientAsync(parse.GetValue(ledger), listen: false, ct);
            if (!await client.CancelJobAsync(id, ct))
            {
                var record = await client.GetJobAsync(id, ct) ?? throw new MergeException($"job {id}: no such job");
                throw new MergeException($"job {id}: already {record.State.ToString().ToLowerInvariant()}");
            }
            Console.WriteLine($"job {id}: cancelled");
            return 0;
        });
        return command;
    }
}
