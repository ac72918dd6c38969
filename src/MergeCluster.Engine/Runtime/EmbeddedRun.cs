using System.Diagnostics;
using MergeCluster.Engine.Ledger;
using MergeCluster.Engine.Telemetry;

namespace MergeCluster.Engine.Runtime;

/// <summary>
/// One job on this machine: the same coordinator and workers as a cluster, over a <see cref="MemoryLedger"/>, with one
/// in-process silo. Cancelling the token cancels the job (its cleanup runs) rather than abandoning it.
/// </summary>
public static class EmbeddedRun
{
    public static async Task<JobRecord> RunAsync(IJobEngine engine, string recipeText, string recipeDirectory, string options, int threads,
        CancellationToken ct, Action<string>? log = null, RuntimeOptions? runtime = null)
    {
        // In memory a progress check costs nothing, so the job's end is noticed at once rather than within a second.
        runtime ??= RuntimeOptions.ForLease(TimeSpan.FromSeconds(30)) with { ProgressInterval = TimeSpan.FromMilliseconds(10) };
        await using var ledger = new MemoryLedger();
        using var root = MergeTelemetry.StartJob(recipeDirectory, out var traceParent);
        long jobId = await ledger.SubmitJobAsync(new JobSubmission(recipeText, recipeDirectory, options, traceParent), CancellationToken.None);

        var identity = new SiloRecord("local", Environment.MachineName, Environment.ProcessId, DateTimeOffset.UtcNow, DateTimeOffset.UtcNow);
        using var drain = new CancellationTokenSource();
        var silo = new Silo(ledger, engine, identity, threads, runtime, log).RunAsync(drain.Token);
        using var cancel = ct.Register(() => _ = ledger.CancelJobAsync(jobId, CancellationToken.None));
        try
        {
            while (true)
            {
                var job = await ledger.GetJobAsync(jobId, CancellationToken.None);
                if (job!.FinishedAt is not null)
                {
                    root?.SetStatus(job.State == JobState.Succeeded ? ActivityStatusCode.Ok : ActivityStatusCode.Error, job.Error);
                    return job;
                }
                if (silo.IsCompleted)
                {
                    await silo; // surfaces what stopped it
                    throw new InvalidOperationException("the local silo stopped before the job ended");
                }
                await ledger.WaitForWorkAsync(runtime.ProgressInterval, CancellationToken.None);
            }
        }
        finally
        {
            drain.Cancel();
            await silo;
        }
    }
}
