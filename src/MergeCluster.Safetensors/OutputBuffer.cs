using System.Diagnostics;

namespace MergeCluster.Safetensors;

/// <summary>
/// Reused buffers for chunks of output bytes, each chunk placed so that its address agrees with its file offset modulo
/// <see cref="SafetensorsWriter.DirectAlignment"/>, so that the writer can send its whole pages to the disk directly.
/// Two chunks alternate: one is computed while the last one's pages are still being written.
/// </summary>
public sealed unsafe class OutputBuffer
{
    private const int Align = SafetensorsWriter.DirectAlignment;
    private readonly byte[][] _slabs;
    private readonly Task[] _writes = [Task.CompletedTask, Task.CompletedTask];
    private int _current, _start;

    public OutputBuffer(int capacity) => _slabs = [Allocate(capacity), Allocate(capacity)];

    /// <summary>
    /// Places the next chunk, <paramref name="length"/> bytes bound for <paramref name="fileOffset"/>, in the buffer
    /// whose write is the older one, once that write has ended (its failure is thrown here); grows it if needed.
    /// </summary>
    public Span<byte> Place(long fileOffset, int length)
    {
        _current ^= 1;
        Wait(_current);
        if (_slabs[_current].Length < length + Align) _slabs[_current] = Allocate(length);
        // Pinned (on the pinned object heap), so the address found here is the address the writer sees.
        fixed (byte* p = _slabs[_current]) _start = (int)((fileOffset - (nint)p) & (Align - 1));
        Debug.Assert(_start + length <= _slabs[_current].Length);
        return _slabs[_current].AsSpan(_start, length);
    }

    /// <summary>Bytes [offset, offset + length) of the chunk placed last.</summary>
    public Span<byte> Chunk(int offset, int length) => _slabs[_current].AsSpan(_start + offset, length);

    /// <summary>Writes the first <paramref name="length"/> bytes of the chunk placed last, leaving its direct pages in flight until that buffer is placed again or <see cref="Drain"/>.</summary>
    public void WriteBehind(SafetensorsWriter writer, TensorInfo tensor, long offsetInTensor, int length)
    {
        Debug.Assert(_writes[_current].IsCompleted, "a placed chunk's buffer has no write in flight");
        _writes[_current] = writer.WriteBehind(tensor, offsetInTensor, _slabs[_current].AsMemory(_start, length));
    }

    /// <summary>
    /// Waits until every write of these buffers has ended and throws the first failure, or, after a failure of the
    /// caller's own (<paramref name="observe"/> false), only waits: the buffers are then free for other work.
    /// </summary>
    public void Drain(bool observe = true)
    {
        for (int slab = 0; slab < _writes.Length; slab++)
            if (observe) Wait(slab);
            else
            {
                ((IAsyncResult)_writes[slab]).AsyncWaitHandle.WaitOne();
                _writes[slab] = Task.CompletedTask;
            }
    }

    private void Wait(int slab)
    {
        var write = _writes[slab];
        _writes[slab] = Task.CompletedTask;
        write.GetAwaiter().GetResult();
    }

    private static byte[] Allocate(int capacity) => GC.AllocateUninitializedArray<byte>(capacity + Align, pinned: true);
}
