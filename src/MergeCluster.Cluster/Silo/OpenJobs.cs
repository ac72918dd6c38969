using MergeCluster.Cluster.Contracts;
using MergeCluster.Engine.Execution;
using Microsoft.Extensions.Logging;

namespace MergeCluster.Cluster.Silo;

/// <summary>
/// The jobs this silo runs tasks of, each opened once (the plan derived again and checked against the job's digest,
/// the inputs mapped) and shared by its tasks here. A job is closed, its inputs unmapped, once no task of it has run
/// on this silo for <see cref="IdleClose"/>: a silo does not keep every job it ever touched open until it exits.
/// </summary>
public sealed partial class OpenJobs(SiloIdentity silo, TimeProvider time, ILogger<OpenJobs> log) : IDisposable
{
    public static readonly TimeSpan IdleClose = TimeSpan.FromSeconds(30);

    private sealed class Entry(Lazy<IShardedRun> run)
    {
        public readonly Lazy<IShardedRun> Run = run;
        public int Users;
        public ITimer? Closing;
    }

    private readonly Lock _lock = new();
    private readonly Dictionary<(long Job, string Digest), Entry> _open = [];

    /// <summary>Jobs open on this silo now.</summary>
    public int Count
    {
        get { lock (_lock) return _open.Count; }
    }

    /// <summary>The job's run, opened if needed; dispose the lease when the task is done.</summary>
    public Lease Acquire(TaskOrder order)
    {
        var key = (order.Job, order.PlanDigest);
        Entry entry;
        lock (_lock)
        {
            if (!_open.TryGetValue(key, out entry!))
                _open[key] = entry = new Entry(new Lazy<IShardedRun>(() => Open(order), LazyThreadSafetyMode.ExecutionAndPublication));
            entry.Users++;
            entry.Closing?.Dispose();
            entry.Closing = null;
        }
        try
        {
            return new Lease(this, key, entry.Run.Value);
        }
        catch
        {
            lock (_lock)
            {
                entry.Users--;
                if (_open.TryGetValue(key, out var current) && current == entry) _open.Remove(key);
            }
            throw;
        }
    }

    private IShardedRun Open(TaskOrder order)
    {
        var temps = Grains.ClusterJobs.TempsOf(order.TempOutput, order.TempIdentity, order.Candidates);
        var job = Grains.ClusterJobs.Open(order.Submission, order.Shape, temps, order.Scratch, silo.Environment, order.PlanDigest);
        var run = job.OpenRun();
        LogOpened(log, order.Job, job.Tasks.Count);
        return run;
    }

    private void Release((long Job, string Digest) key)
    {
        lock (_lock)
        {
            if (!_open.TryGetValue(key, out var entry) || --entry.Users > 0) return;
            entry.Closing = time.CreateTimer(_ => Close(key, entry), null, IdleClose, Timeout.InfiniteTimeSpan);
        }
    }

    private void Close((long Job, string Digest) key, Entry entry)
    {
        lock (_lock)
        {
            if (entry.Users > 0 || !_open.TryGetValue(key, out var current) || current != entry) return;
            _open.Remove(key);
            entry.Closing?.Dispose();
        }
        if (entry.Run.IsValueCreated) entry.Run.Value.Dispose();
        LogClosed(log, key.Job);
    }

    public void Dispose()
    {
        List<Entry> entries;
        lock (_lock)
        {
            entries = [.. _open.Values];
            _open.Clear();
        }
        foreach (var e in entries)
        {
            e.Closing?.Dispose();
            if (e.Run.IsValueCreated) e.Run.Value.Dispose();
        }
    }

    /// <summary>A task's use of an open job.</summary>
    public sealed class Lease(OpenJobs owner, (long, string) key, IShardedRun run) : IDisposable
    {
        private int _disposed;
        public IShardedRun Run { get; } = run;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0) owner.Release(key);
        }
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "job {Job}: opened on this silo ({Tasks} tasks)")]
    private static partial void LogOpened(ILogger logger, long job, int tasks);

    [LoggerMessage(Level = LogLevel.Information, Message = "job {Job}: closed on this silo (no task of it for a while), inputs unmapped")]
    private static partial void LogClosed(ILogger logger, long job);
}
