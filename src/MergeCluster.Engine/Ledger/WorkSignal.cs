namespace MergeCluster.Engine.Ledger;

/// <summary>
/// Wakes every waiter at once when work may have appeared. A pulse between a failed claim and the next wait is
/// missed, which is why waits always carry a timeout: polling is the fallback, never the only path.
/// </summary>
public sealed class WorkSignal
{
    private TaskCompletionSource _next = New();

    private static TaskCompletionSource New() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Pulse() => Interlocked.Exchange(ref _next, New()).TrySetResult();

    /// <summary>Returns at the next pulse or after <paramref name="timeout"/>, whichever comes first.</summary>
    public async Task WaitAsync(TimeSpan timeout, TimeProvider time, CancellationToken ct)
    {
        try
        {
            await Volatile.Read(ref _next).Task.WaitAsync(timeout, time, ct);
        }
        catch (TimeoutException)
        {
        }
    }
}
