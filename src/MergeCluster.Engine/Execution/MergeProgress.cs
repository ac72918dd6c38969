using MergeCluster.Merge.Architecture;

namespace MergeCluster.Engine.Execution;

/// <summary>What a merge is doing, for a progress display.</summary>
public enum MergeStage { Planning, Hashing, Merging }

/// <summary>Counters the executors bump and a progress display polls; thread-safe, no callbacks on the hot path.</summary>
public sealed class MergeProgress
{
    private long _inputBytes;
    private long _outputBytes;
    private long _hashedBytes;
    private long _hashTotal;
    private volatile int _component;
    private volatile int _stage;

    public long InputBytes => Interlocked.Read(ref _inputBytes);
    public long OutputBytes => Interlocked.Read(ref _outputBytes);
    public Component Component => (Component)_component;
    public MergeStage Stage => (MergeStage)_stage;
    /// <summary>Bytes of inputs hashed so far, and how many need hashing (those not in the hash cache).</summary>
    public (long Done, long Total) Hashing => (Interlocked.Read(ref _hashedBytes), Interlocked.Read(ref _hashTotal));

    public void Add(long inputBytes, long outputBytes, Component component)
    {
        Interlocked.Add(ref _inputBytes, inputBytes);
        Interlocked.Add(ref _outputBytes, outputBytes);
        _component = (int)component;
        _stage = (int)MergeStage.Merging;
    }

    /// <summary>Hashing starts: <paramref name="totalBytes"/> of inputs are not cached.</summary>
    public void StartHashing(long totalBytes)
    {
        Interlocked.Exchange(ref _hashedBytes, 0);
        Interlocked.Exchange(ref _hashTotal, totalBytes);
        _stage = (int)MergeStage.Hashing;
    }

    public void Hashed(long bytes) => Interlocked.Add(ref _hashedBytes, bytes);
}
