using MergeCluster.Engine.Planning;
using MergeCluster.Safetensors;
using Microsoft.Win32.SafeHandles;

namespace MergeCluster.Engine.Execution;

/// <summary>
/// Open handles on a plan's inputs, read with positional reads into caller buffers. Unlike a mapping, this keeps
/// resident memory bounded by the buffers, whatever the number and size of the inputs.
/// </summary>
public sealed class InputSet : IDisposable
{
    private readonly SafeFileHandle?[] _handles;
    private readonly MergePlan _plan;

    public InputSet(MergePlan plan)
    {
        _plan = plan;
        _handles = new SafeFileHandle?[plan.Inputs.Length];
        foreach (var input in plan.Inputs)
        {
            if (input.Length == 0) continue;
            try
            {
                var handle = File.OpenHandle(input.Path, FileMode.Open, FileAccess.Read, FileShare.Read);
                if (RandomAccess.GetLength(handle) != input.Length)
                    throw new SafetensorsException(SafetensorsError.Io, input.Path, null, "file changed size since it was planned");
                _handles[input.Index] = handle;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                Dispose();
                throw new SafetensorsException(SafetensorsError.Io, input.Path, null, e.Message, e);
            }
        }
    }

    /// <summary>Fills <paramref name="destination"/> with the bytes of <paramref name="source"/> starting at <paramref name="byteOffset"/>.</summary>
    public void Read(TermSource source, long byteOffset, Span<byte> destination)
    {
        var input = _plan.Inputs[source.Input];
        var handle = _handles[source.Input] ?? throw new InvalidOperationException($"input '{input.Name}' is not open");
        long position = input.Header.DataStart + source.Tensor.Begin + byteOffset;
        while (!destination.IsEmpty)
        {
            int n = RandomAccess.Read(handle, destination, position);
            if (n <= 0)
                throw new SafetensorsException(SafetensorsError.MissingData, input.Path, source.Tensor.Key, "file ended while reading tensor data (truncated after planning?)");
            destination = destination[n..];
            position += n;
        }
    }

    public void Dispose()
    {
        foreach (var h in _handles) h?.Dispose();
    }
}
