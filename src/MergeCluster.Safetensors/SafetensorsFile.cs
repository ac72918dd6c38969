using System.IO.MemoryMappedFiles;

namespace MergeCluster.Safetensors;

/// <summary>A memory-mapped, validated safetensors file giving random access to any tensor by key.</summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private readonly byte* _base;

    private SafetensorsFile(string path, long length, SafetensorsHeader header, MemoryMappedFile? map, MemoryMappedViewAccessor? view, byte* basePtr)
    {
        Path = path;
        Length = length;
        Header = header;
        _map = map;
        _view = view;
        _base = basePtr;
    }

    public string Path { get; }
    public long Length { get; }
    public SafetensorsHeader Header { get; }
    public IReadOnlyList<TensorInfo> Tensors => Header.Tensors;

    /// <summary>Opens and validates a file; pickle checkpoints are refused before a byte of them is interpreted.</summary>
    public static SafetensorsFile Open(string path)
    {
        using var handle = OpenChecked(path);
        var header = ReadHeader(handle, path, out long length);
        if (header.DataLength == 0)
            return new SafetensorsFile(path, length, header, null, null, null);
        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        try
        {
            map = MemoryMappedFile.CreateFromFile(handle, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: true);
            view = map.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            return new SafetensorsFile(path, length, header, map, view, p + view.PointerOffset);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            view?.Dispose();
            map?.Dispose();
            throw new SafetensorsException(SafetensorsError.Io, path, null, $"cannot map file: {e.Message}", e);
        }
    }

    /// <summary>Reads and validates only the header, without mapping the data.</summary>
    public static SafetensorsHeader ReadHeader(string path, out long length)
    {
        using var handle = OpenChecked(path);
        return ReadHeader(handle, path, out length);
    }

    /// <summary>
    /// Opens a checkpoint for reading: a regular file only (a FIFO or device is refused without blocking), and never a
    /// pickle, refused by extension before it is opened and by its magic bytes after.
    /// </summary>
    public static Microsoft.Win32.SafeHandles.SafeFileHandle OpenChecked(string path)
    {
        CheckPickleExtension(path);
        var handle = RegularFile.OpenRead(path);
        try
        {
            Span<byte> magic = stackalloc byte[4];
            int got = RandomAccess.Read(handle, magic, 0);
            // Pickle protocol 2+ starts with 0x80 then the protocol; torch's zip format starts with "PK\x03\x04".
            bool pickle = got >= 2 && magic[0] == 0x80 && magic[1] is >= 2 and <= 5;
            bool zip = got >= 4 && magic[0] == (byte)'P' && magic[1] == (byte)'K' && magic[2] == 3 && magic[3] == 4;
            if (pickle || zip)
                throw new SafetensorsException(SafetensorsError.PickleRefused, path, null,
                    "file is a pickle/torch checkpoint, not safetensors; it is refused and never unpickled");
            return handle;
        }
        catch (Exception e)
        {
            handle.Dispose();
            if (e is IOException or UnauthorizedAccessException) throw new SafetensorsException(SafetensorsError.Io, path, null, e.Message, e);
            throw;
        }
    }

    /// <summary>Reads and validates the header from an open checkpoint.</summary>
    public static SafetensorsHeader ReadHeader(Microsoft.Win32.SafeHandles.SafeFileHandle handle, string path, out long length)
    {
        try
        {
            length = RandomAccess.GetLength(handle);
            Span<byte> prefix = stackalloc byte[8];
            int got = RandomAccess.Read(handle, prefix, 0);
            long n = SafetensorsHeader.ReadHeaderLength(prefix[..got], length, path);
            // n is bounded by MaxHeaderBytes and by the file's real size, so this allocation is not attacker-sized.
            var json = new byte[n];
            ReadExactly(handle, json, 8, path);
            return SafetensorsHeader.Parse(json, length - 8 - n, path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SafetensorsException(SafetensorsError.Io, path, null, e.Message, e);
        }
    }

    /// <summary>Extensions of pickle-based checkpoints, which can run code when loaded: never read, never written.</summary>
    public static bool IsPickleExtension(string path) =>
        System.IO.Path.GetExtension(path).ToLowerInvariant() is ".ckpt" or ".pt" or ".pth" or ".bin" or ".pkl" or ".pickle";

    /// <summary>Refuses pickle-based checkpoints by extension; they can run code when loaded.</summary>
    public static void CheckPickleExtension(string path)
    {
        if (IsPickleExtension(path))
            throw new SafetensorsException(SafetensorsError.PickleRefused, path, null,
                $"'{System.IO.Path.GetExtension(path).ToLowerInvariant()}' is a pickle checkpoint, which can execute code when loaded; it is refused. Convert it to .safetensors in a sandbox first");
    }

    public TensorInfo Get(string key) =>
        Header.TryGet(key, out var t) ? t : throw new SafetensorsException(SafetensorsError.NotFound, Path, key, "tensor not in file");

    public bool TryGet(string key, out TensorInfo info) => Header.TryGet(key, out info);

    /// <summary>Absolute file offset of a tensor's first byte.</summary>
    public long FileOffset(TensorInfo t) => Header.DataStart + t.Begin;

    /// <summary>A window of a tensor's bytes; spans are int-sized, so large tensors are read in windows.</summary>
    public ReadOnlySpan<byte> Bytes(TensorInfo t, long offset, int count)
    {
        if (offset < 0 || count < 0 || offset + count > t.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(offset), $"window [{offset}, {offset + count}) outside tensor '{t.Key}' of {t.ByteLength} bytes");
        if (count == 0) return ReadOnlySpan<byte>.Empty;
        return new ReadOnlySpan<byte>(_base + Header.DataStart + t.Begin + offset, count);
    }

    /// <summary>All bytes of a tensor below 2 GiB.</summary>
    public ReadOnlySpan<byte> Bytes(TensorInfo t) => Bytes(t, 0, checked((int)t.ByteLength));

    /// <summary>Raw bytes of the whole file (header included) for hashing; windowed because spans are int-sized.</summary>
    public ReadOnlySpan<byte> FileBytes(long offset, int count)
    {
        if (offset < 0 || count < 0 || offset + count > Length) throw new ArgumentOutOfRangeException(nameof(offset));
        if (_base == null)
            throw new InvalidOperationException("file has no mapped data");
        return new ReadOnlySpan<byte>(_base + offset, count);
    }

    /// <summary>
    /// Tells the kernel that this mapping is read at random: no read-ahead around page faults, so reading one tensor
    /// brings only its own pages into memory. Suits tools that read a few tensors of a cold file.
    /// </summary>
    public void AdviseRandomAccess() => PageCache.Advise(_base, Length, PageCache.Random);

    /// <summary>
    /// Tells the kernel that the whole mapping is read front to back: larger read-ahead on faults. Suits a full pass
    /// over a cold file; it makes no difference once the file is in the page cache.
    /// </summary>
    public void AdviseSequentialAccess() => PageCache.Advise(_base, Length, PageCache.Sequential);

    /// <summary>
    /// Starts reading a window of a tensor into the page cache without waiting, so that a later <see cref="Bytes(TensorInfo, long, int)"/>
    /// on it finds the pages resident; a streaming reader calls this one window ahead of the window it decodes.
    /// </summary>
    public void Prefetch(TensorInfo t, long offset, long count)
    {
        if (offset < 0 || count < 0 || offset + count > t.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(offset), $"window [{offset}, {offset + count}) outside tensor '{t.Key}' of {t.ByteLength} bytes");
        if (count > 0) PageCache.Advise(_base, FileOffset(t) + offset, count, PageCache.WillNeed);
    }

    private static void ReadExactly(Microsoft.Win32.SafeHandles.SafeFileHandle handle, Span<byte> buffer, long offset, string path)
    {
        while (!buffer.IsEmpty)
        {
            int n = RandomAccess.Read(handle, buffer, offset);
            if (n <= 0) throw new SafetensorsException(SafetensorsError.InvalidHeaderLength, path, null, "file ends inside the header");
            buffer = buffer[n..];
            offset += n;
        }
    }

    public void Dispose()
    {
        if (_view is not null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
        _map?.Dispose();
    }
}
