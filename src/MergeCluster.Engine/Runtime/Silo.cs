using MergeCluster.Engine.Ledger;

namespace MergeCluster.Engine.Runtime;

/// <summary>
/// A member of the cluster: registers and heartbeats in the ledger, runs its workers and the coordinator role, and on
/// drain finishes or releases its tasks, hands its jobs over and deregisters. The embedded mode runs one over a
/// <see cref="MemoryLedger"/>; the <c>silo</c> command runs one over PostgreSQL.
/// </summary>
public sealed class Silo(ILedger ledger, IJobEngine engine, SiloRecord identity, int threads, RuntimeOptions options, Action<string>? log = null)
{
    private readonly Action<string> _log = log ?? (_ => { });

    public string Name => identity.Name;

    /// <summary>Runs until <paramref name="drain"/> is signalled and the silo has drained, or <paramref name="abort"/>.</summary>
    public async Task RunAsync(CancellationToken drain, CancellationToken abort = default)
    {
        if (threads < 1) throw new ArgumentOutOfRangeException(nameof(threads), "a silo needs at least one worker thread");
        await ledger.RegisterSiloAsync(identity, abort);
        _log($"silo {Name}: joined with {threads} worker(s)");
        using var stopHeartbeat = CancellationTokenSource.CreateLinkedTokenSource(abort);
        var heartbeat = HeartbeatAsync(stopHeartbeat.Token);

        var jobs = new JobCache(ledger);
        var roles = new List<Task> { new Coordinator(ledger, engine, Name, options, _log).RunAsync(drain, abort) };
        for (int i = 0; i < threads; i++)
        {
            var worker = new Worker(ledger, engine, Name, options, _log, jobs);
            // Task.Run: a worker's engine code may block a thread, and workers must not serialise on the caller's.
            roles.Add(Task.Run(() => worker.RunAsync(drain, abort), CancellationToken.None));
        }
        try
        {
            await Task.WhenAll(roles);
        }
        finally
        {
            stopHeartbeat.Cancel();
            await heartbeat;
            try
            {
                await ledger.DeregisterSiloAsync(Name, CancellationToken.None);
                _log($"silo {Name}: drained and left");
            }
            catch (Exception e)
            {
                _log($"silo {Name}: could not deregister (its heartbeat will age out): {e.Message}");
            }
        }
    }

    private async Task HeartbeatAsync(CancellationToken ct)
    {
        using var timer = new PeriodicTimer(options.HeartbeatEvery);
        try
        {
            while (await timer.WaitForNextTickAsync(ct))
            {
                try
                {
                    await ledger.HeartbeatAsync(Name, ct);
                }
                catch (Exception e) when (!ct.IsCancellationRequested)
                {
                    _log($"silo {Name}: heartbeat failed: {e.Message}");
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }
}
