using System.CommandLine;
using MergeCluster.Merge;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster cancel JOB`: stops a queued or running job; its job grain removes its temporary files.</summary>
public static class CancelCommand
{
    public static Command Create()
    {
        var job = new Argument<long>("JOB") { Description = "job id" };
        var cluster = new ClusterOptions();
        var command = new Command("cancel", "cancel a queued or running job");
        command.Arguments.Add(job);
        cluster.AddTo(command);
        command.SetAction(async (parse, ct) =>
        {
            long id = parse.GetValue(job);
            await using var connection = await cluster.ConnectAsync(parse, "cancel", ct);
            _ = await connection.StatusAsync(id); // a job that never was is "no such job", not "already queued"
            if (!await connection.CancelAsync(id))
                throw new MergeException($"job {id}: already {StatusCommand.StateName((await connection.StatusAsync(id)).State)}");
            Console.WriteLine($"job {id}: cancelled");
            return 0;
        });
        return command;
    }
}
