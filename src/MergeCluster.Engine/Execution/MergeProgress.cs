using MergeCluster.Merge.Architecture;

namespace MergeCluster.Engine.Execution;

/// <summary>Counters the executors bump and a progress display polls; thread-safe, no callbacks on the hot path.</summary>
public sealed class MergeProgress
{
    private long _inputBytes;
    private long _outputBytes;
    private volatile int _component;

    public long InputBytes => Interlocked.Read(ref _inputBytes);
    public long OutputBytes => Interlocked.Read(ref _outputBytes);
    public Component Component => (Component)_component;

    public void Add(long inputBytes, long outputBytes, Component component)
    {
        Interlocked.Add(ref _inputBytes, inputBytes);
        Interlocked.Add(ref _outputBytes, outputBytes);
        _component = (int)component;
    }
}
