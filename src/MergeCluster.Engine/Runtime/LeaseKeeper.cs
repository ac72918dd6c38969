namespace MergeCluster.Engine.Runtime;

/// <summary>
/// Renews a lease on a timer while work runs under it, and cancels that work once the lease is lost: the ledger
/// said no, or renewals kept failing for a whole lease period (another silo may hold it by now).
/// </summary>
internal sealed class LeaseKeeper : IAsyncDisposable
{
    private readonly CancellationTokenSource _lost = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;

    /// <summary>Cancelled when the lease is lost.</summary>
    public CancellationToken Lost => _lost.Token;
    public bool IsLost => _lost.IsCancellationRequested;
    /// <summary>Why the lease was lost, for the log.</summary>
    public string? Reason { get; private set; }

    public LeaseKeeper(Func<CancellationToken, Task<bool>> renew, TimeSpan every, TimeSpan lease, Action<string> log)
    {
        _loop = RunAsync(renew, every, lease, log);
    }

    private async Task RunAsync(Func<CancellationToken, Task<bool>> renew, TimeSpan every, TimeSpan lease, Action<string> log)
    {
        var lastRenewed = DateTimeOffset.UtcNow;
        using var timer = new PeriodicTimer(every);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token))
            {
                try
                {
                    if (await renew(_stop.Token))
                    {
                        lastRenewed = DateTimeOffset.UtcNow;
                        continue;
                    }
                    Reason = "the ledger no longer holds the lease for it (expired and taken over, or the job ended)";
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    if (DateTimeOffset.UtcNow - lastRenewed < lease)
                    {
                        log($"lease renewal failed, retrying: {e.Message}");
                        continue;
                    }
                    Reason = $"renewals failed for a whole lease period: {e.Message}";
                }
                _lost.Cancel();
                return;
            }
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested)
        {
        }
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        await _loop;
        _stop.Dispose();
        _lost.Dispose();
    }
}
