using System.Diagnostics;

namespace MergeCluster.Safetensors;

/// <summary>
/// Reused buffers for chunks of output bytes, each chunk placed so that its address agrees with its file offset modulo
/// <see cref="SafetensorsWriter.DirectAlignment"/>, so that the writer can send its whole pages to the disk directly.
/// Two chunks alternate: one is computed while the last one's pages are still being written.
/// </summary>
/// <remarks>
/// The bytes after a chunk's last whole page, and a chunk too small to go directly (a bias, a norm), are kept back:
/// when the next chunk written starts where they end (an executor's chunks follow each other through a shard), they go
/// to the disk directly at its head. Written through the page cache instead, they take the file's lock exclusively,
/// so the worker waited there for every direct write in flight, its own and other workers'. What is kept back when no
/// such chunk follows goes through the page cache at the next write or at <see cref="Drain"/>.
/// </remarks>
public sealed unsafe class OutputBuffer
{
    private const int Align = SafetensorsWriter.DirectAlignment;
    private readonly byte[][] _slabs;
    private readonly Task[] _writes = [Task.CompletedTask, Task.CompletedTask];
    private int _current, _start;
    // Room in front of each chunk for the bytes kept back, which are always fewer than this.
    private const int Room = SafetensorsWriter.MinDirectBytes;
    // The bytes kept back from the last writes: a copy, their writer (null when none are kept) and file offset.
    private readonly byte[] _kept = new byte[Room];
    private int _keptLength;
    private SafetensorsWriter? _keptWriter;
    private long _keptOffset;

    public OutputBuffer(int capacity) => _slabs = [Allocate(capacity), Allocate(capacity)];

    /// <summary>
    /// Places the next chunk, <paramref name="length"/> bytes bound for <paramref name="fileOffset"/>, in the buffer
    /// whose write is the older one, once that write has ended (its failure is thrown here); grows it if needed.
    /// </summary>
    public Span<byte> Place(long fileOffset, int length)
    {
        _current ^= 1;
        Wait(_current);
        if (_slabs[_current].Length < length + Room + Align) _slabs[_current] = Allocate(length);
        // Pinned (on the pinned object heap), so the address found here is the address the writer sees.
        fixed (byte* p = _slabs[_current]) _start = Room + (int)((fileOffset - (nint)p) & (Align - 1));
        Debug.Assert(_start + length <= _slabs[_current].Length);
        return _slabs[_current].AsSpan(_start, length);
    }

    /// <summary>Bytes [offset, offset + length) of the chunk placed last.</summary>
    public Span<byte> Chunk(int offset, int length) => _slabs[_current].AsSpan(_start + offset, length);

    /// <summary>
    /// Writes the first <paramref name="length"/> bytes of the chunk placed last, leaving its direct pages in flight
    /// until that buffer is placed again or <see cref="Drain"/>, and its last bytes kept back (see the remarks).
    /// </summary>
    public void WriteBehind(SafetensorsWriter writer, TensorInfo tensor, long offsetInTensor, int length)
    {
        Debug.Assert(_writes[_current].IsCompleted, "a placed chunk's buffer has no write in flight");
        long offset = writer.FileOffset(tensor, offsetInTensor, length);
        int start = _start;
        if (_keptWriter == writer && _keptOffset + _keptLength == offset)
        {
            start -= _keptLength;
            _kept.AsSpan(0, _keptLength).CopyTo(_slabs[_current].AsSpan(start));
            offset = _keptOffset;
            length += _keptLength;
            _keptWriter = null;
        }
        else WriteKept();
        _writes[_current] = writer.WriteBehind(offset, _slabs[_current].AsMemory(start, length), out int kept);
        Debug.Assert(kept < Room);
        if (kept > 0)
        {
            _slabs[_current].AsSpan(start + length - kept, kept).CopyTo(_kept);
            (_keptWriter, _keptOffset, _keptLength) = (writer, offset + length - kept, kept);
        }
    }

    /// <summary>
    /// Writes the bytes kept back and waits until every write of these buffers has ended, throwing the first
    /// failure; or, after a failure of the caller's own (<paramref name="observe"/> false), drops the bytes kept and
    /// only waits: the buffers are then free for other work.
    /// </summary>
    public void Drain(bool observe = true)
    {
        try
        {
            if (observe) WriteKept();
        }
        finally
        {
            _keptWriter = null;
            for (int slab = 0; slab < _writes.Length; slab++)
                if (observe) Wait(slab);
                else
                {
                    ((IAsyncResult)_writes[slab]).AsyncWaitHandle.WaitOne();
                    _writes[slab] = Task.CompletedTask;
                }
        }
    }

    private void WriteKept()
    {
        if (_keptWriter is not { } writer) return;
        _keptWriter = null;
        writer.WriteAt(_keptOffset, _kept.AsSpan(0, _keptLength));
    }

    private void Wait(int slab)
    {
        var write = _writes[slab];
        _writes[slab] = Task.CompletedTask;
        write.GetAwaiter().GetResult();
    }

    private static byte[] Allocate(int capacity) => GC.AllocateUninitializedArray<byte>(capacity + Room + Align, pinned: true);
}
