namespace MergeCluster.Engine.Execution;

/// <summary>Counters the executors bump and a progress display polls; thread-safe, no callbacks on the hot path.</summary>
public sealed class MergeProgress
{
    private long _inputBytes;
    private long _outputBytes;
    private volatile string _component = "";

    public long InputBytes => Interlocked.Read(ref _inputBytes);
    public long OutputBytes => Interlocked.Read(ref _outputBytes);
    public string Component => _component;

    public void Add(long inputBytes, long outputBytes, string component)
    {
        Interlocked.Add(ref _inputBytes, inputBytes);
        Interlocked.Add(ref _outputBytes, outputBytes);
        _component = component;
    }
}
