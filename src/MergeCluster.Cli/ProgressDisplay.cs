using System.Diagnostics;
using MergeCluster.Engine.Execution;
using MergeCluster.Merge.Architecture;
using Spectre.Console;

namespace MergeCluster.Cli;

/// <summary>A live bar with bytes/s, ETA and component on a terminal; plain periodic lines when output is redirected.</summary>
public static class ProgressDisplay
{
    /// <param name="verb">What the work is called on the bar and in the plain lines: merge, distance, sweep.</param>
    public static async Task RunAsync(MergeProgress progress, long totalBytes, Func<Task> work, CancellationToken ct, string verb = "merge")
    {
        if (!Console.IsErrorRedirected && AnsiConsole.Profile.Capabilities.Interactive)
        {
            var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
            await console.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
                .StartAsync(async ctx =>
                {
                    var task = ctx.AddTask(verb, maxValue: Math.Max(totalBytes, 1));
                    var running = work();
                    while (!running.IsCompleted)
                    {
                        await Task.WhenAny(running, Task.Delay(200, CancellationToken.None));
                        task.Description = $"{verb} {progress.Component.Name()}";
                        task.Value = Math.Min(progress.InputBytes, totalBytes);
                    }
                    await running;
                    task.Value = task.MaxValue;
                });
            return;
        }

        var clock = Stopwatch.StartNew();
        var job = work();
        while (!job.IsCompleted)
        {
            await Task.WhenAny(job, Task.Delay(TimeSpan.FromSeconds(5), CancellationToken.None));
            if (job.IsCompleted) break;
            long done = progress.InputBytes;
            double rate = done / Math.Max(clock.Elapsed.TotalSeconds, 1e-9);
            string eta = rate > 0 ? TimeSpan.FromSeconds((totalBytes - done) / rate).ToString(@"h\:mm\:ss") : "?";
            Console.Error.WriteLine($"{verb}: {Units.Bytes(done)} / {Units.Bytes(totalBytes)} read ({100.0 * done / Math.Max(totalBytes, 1):F0}%), {Units.Bytes((long)rate)}/s, ETA {eta}, {progress.Component.Name()}");
        }
        await job;
    }
}
