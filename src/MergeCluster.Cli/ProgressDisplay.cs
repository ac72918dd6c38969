using System.Diagnostics;
using MergeCluster.Engine.Execution;
using MergeCluster.Merge.Architecture;
using Spectre.Console;

namespace MergeCluster.Cli;

/// <summary>A live bar with bytes/s, ETA and component on a terminal; plain periodic lines when output is redirected.</summary>
public static class ProgressDisplay
{
    /// <param name="verb">What the work is called on the bar and in the plain lines: merge, distance, sweep.</param>
    public static Task RunAsync(MergeProgress progress, long totalBytes, Func<Task> work, CancellationToken ct, string verb = "merge") =>
        RunAsync(progress, () => totalBytes, work, ct, verb);

    /// <param name="totalBytes">The bytes the work reads, asked once merging has started (work that plans first knows it only then).</param>
    public static async Task RunAsync(MergeProgress progress, Func<long> totalBytes, Func<Task> work, CancellationToken ct, string verb = "merge")
    {
        if (!Console.IsErrorRedirected && AnsiConsole.Profile.Capabilities.Interactive)
        {
            var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
            await console.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
                .StartAsync(async ctx =>
                {
                    ProgressTask? hashing = null;
                    var task = ctx.AddTask(verb, autoStart: false, maxValue: 1);
                    var running = Task.Run(work);
                    while (!running.IsCompleted)
                    {
                        await Task.WhenAny(running, Task.Delay(200, CancellationToken.None));
                        if (progress.Hashing.Total > 0)
                        {
                            var (done, total) = progress.Hashing;
                            hashing ??= ctx.AddTaskBefore("hashing inputs", new ProgressTaskSettings { MaxValue = Math.Max(total, 1) }, task);
                            hashing.Value = Math.Min(done, hashing.MaxValue);
                        }
                        if (progress.Stage != MergeStage.Merging) continue;
                        if (!task.IsStarted)
                        {
                            task.MaxValue = Math.Max(totalBytes(), 1);
                            task.StartTask();
                        }
                        task.Description = $"{verb} {progress.Component.Name()}";
                        task.Value = Math.Min(progress.InputBytes, task.MaxValue);
                    }
                    await running;
                    task.Value = task.MaxValue;
                });
            return;
        }

        // Redirected: a line once hashing has taken a second (it can take minutes before the first byte is merged),
        // then one every 5 s; a short merge prints nothing but its result.
        var clock = Stopwatch.StartNew();
        var job = Task.Run(work);
        var stage = MergeStage.Planning;
        var next = TimeSpan.FromSeconds(5);
        TimeSpan? hashingSince = null;
        while (!job.IsCompleted)
        {
            await Task.WhenAny(job, Task.Delay(TimeSpan.FromMilliseconds(100), CancellationToken.None));
            if (job.IsCompleted) break;
            if (progress.Stage != stage)
            {
                stage = progress.Stage;
                hashingSince = stage == MergeStage.Hashing ? clock.Elapsed : null;
            }
            if (hashingSince is { } since && clock.Elapsed - since >= TimeSpan.FromSeconds(1))
            {
                hashingSince = null;
                Console.Error.WriteLine($"{verb}: hashing {Units.Bytes(progress.Hashing.Total)} of inputs (not in the hash cache)");
            }
            if (clock.Elapsed < next) continue;
            next = clock.Elapsed + TimeSpan.FromSeconds(5);
            if (stage == MergeStage.Hashing)
            {
                var (hashed, total) = progress.Hashing;
                Console.Error.WriteLine($"{verb}: hashed {Units.Bytes(hashed)} / {Units.Bytes(total)} ({100.0 * hashed / Math.Max(total, 1):F0}%)");
                continue;
            }
            long done = progress.InputBytes, all = totalBytes();
            double rate = done / Math.Max(clock.Elapsed.TotalSeconds, 1e-9);
            string eta = rate > 0 ? TimeSpan.FromSeconds((all - done) / rate).ToString(@"h\:mm\:ss") : "?";
            Console.Error.WriteLine($"{verb}: {Units.Bytes(done)} / {Units.Bytes(all)} read ({100.0 * done / Math.Max(all, 1):F0}%), {Units.Bytes((long)rate)}/s, ETA {eta}, {progress.Component.Name()}");
        }
        await job;
    }
}
