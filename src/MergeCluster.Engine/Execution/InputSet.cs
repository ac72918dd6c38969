using System.IO.MemoryMappedFiles;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Engine.Execution;

/// <summary>
/// A plan's inputs, mapped read-only. A window of a tensor is used in place, straight from the page cache (a
/// positional read would copy every byte once more, which cost a quarter of a merge's CPU time), and released when
/// done, so resident memory stays bounded by the windows in use, whatever the number and size of the inputs.
/// </summary>
/// <remarks>
/// Touching a mapped page past the end of a file truncated while the merge runs raises SIGBUS, which no managed code
/// can catch: the process dies (existing outputs stay untouched). The length is checked when the set is opened, and
/// each window is populated before it is read, which turns a truncation that happened before a window was mapped into
/// an error naming the file and key. A truncation into the window being read still kills the process, and that is
/// the usual case of copying a new file over an input in place (the copy truncates to zero first). Replacing a file by
/// rename, as tools that write checkpoints do, leaves the mapped inode intact.
/// </remarks>
public sealed unsafe class InputSet : IDisposable
{
    private readonly IReadOnlyList<MergeInput> _inputs;
    private readonly MemoryMappedFile?[] _maps;
    private readonly MemoryMappedViewAccessor?[] _views;
    private readonly nint[] _bases;
    private readonly HashFollower? _hashes;
    // Per input, how far the page cache has been asked to read ahead (absolute file offset); guarded by the array.
    private readonly long[] _readAhead;
    private readonly Microsoft.Win32.SafeHandles.SafeFileHandle?[] _files;
    private readonly long _readAheadBytes;

    public InputSet(MergePlan plan) : this(plan.Inputs) { }

    /// <summary>Maps a plan's inputs; <paramref name="hashes"/> hashes each window read, before it is released.</summary>
    internal InputSet(MergePlan plan, HashFollower? hashes) : this(plan.Inputs) => _hashes = hashes;

    /// <summary>Maps the given inputs (those of length 0 stay closed); <see cref="MergeInput.Index"/> is each one's place in the list.</summary>
    public InputSet(IReadOnlyList<MergeInput> inputs)
    {
        _inputs = inputs;
        _maps = new MemoryMappedFile?[inputs.Count];
        _views = new MemoryMappedViewAccessor?[inputs.Count];
        _bases = new nint[inputs.Count];
        _readAhead = new long[inputs.Count];
        _files = new Microsoft.Win32.SafeHandles.SafeFileHandle?[inputs.Count];
        _readAheadBytes = ReadAheadFor(inputs.Count);
        foreach (var input in inputs)
        {
            if (input.Length == 0) continue;
            try
            {
                var handle = Open(input);
                _files[input.Index] = handle;
                var map = MemoryMappedFile.CreateFromFile(handle, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: true);
                _maps[input.Index] = map;
                var view = map.CreateViewAccessor(0, input.Length, MemoryMappedFileAccess.Read);
                _views[input.Index] = view;
                byte* p = null;
                view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
                _bases[input.Index] = (nint)(p + view.PointerOffset);
                // Read front to back, once: more read-ahead on a cold file, and its pages are the first to go when memory is short.
                PageCache.Advise((byte*)_bases[input.Index], input.Length, PageCache.Sequential);
                PageCache.Advise((byte*)_bases[input.Index], input.Length, PageCache.HugePage);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or SafetensorsException)
            {
                Dispose();
                throw e as SafetensorsException ?? new SafetensorsException(SafetensorsError.Io, input.Path, null, e.Message, e);
            }
        }
    }

    /// <summary>
    /// The bytes [byteOffset, byteOffset + length) of <paramref name="source"/>'s data, mapped in one call. Valid until
    /// <see cref="Release"/> of the same window or disposal; pair every window with a release.
    /// </summary>
    public ReadOnlySpan<byte> Window(TermSource source, long byteOffset, int length)
    {
        byte* p = Address(source, byteOffset, length);
        ReadAhead(source.Input, p - (byte*)_bases[source.Input], length);
        if (!PageCache.Populate(p, length))
        {
            var input = _inputs[source.Input];
            throw new SafetensorsException(SafetensorsError.Io, input.Path, source.Tensor.Key,
                $"the file shrank while it was being read (planned at {input.Length} bytes, now {CurrentLength(input.Path)})");
        }
        return new ReadOnlySpan<byte>(p, length);
    }

    /// <summary>
    /// Unmaps the pages a window of a tensor leaves behind from this process; they stay in the page cache for anyone
    /// else. Windows of a tensor are released in order, front to back, each once it has been read whole.
    /// </summary>
    public void Release(TermSource source, long byteOffset, int length)
    {
        byte* p = Address(source, byteOffset, length);
        var input = _inputs[source.Input];
        byte* basePointer = (byte*)_bases[source.Input];
        // Populating a window maps every page of each page-cache folio it touches, and folios reach 2 MiB (a PMD) on
        // current kernels, so pages before and after the window get mapped too. A window releases the whole folios
        // behind its end, the last window of a tensor also the one its end lies in: so resident memory stays at the
        // windows in use plus a folio per source, and no page is mapped, unmapped and mapped again by the next window
        // (which releasing each window rounded out did: a 2 MiB folio four times over for windows of 512 KiB, the
        // largest part of a merge's system time).
        long position = p - basePointer;
        _hashes?.Read(source.Input, position, new ReadOnlySpan<byte>(p, length));
        long start = position & ~(LargestFolioBytes - 1);
        bool last = byteOffset + length == source.Tensor.ByteLength;
        long end = last ? Math.Min(input.Length, (position + length + LargestFolioBytes - 1) & ~(LargestFolioBytes - 1))
                        : (position + length) & ~(LargestFolioBytes - 1);
        if (end > start) PageCache.Advise(basePointer, start, end - start, PageCache.DontNeed);
    }

    private const long LargestFolioBytes = 2 << 20;

    /// <summary>Opens an input for reading, refused unless it is still the file planned, at the length planned.</summary>
    internal static Microsoft.Win32.SafeHandles.SafeFileHandle Open(MergeInput input)
    {
        var handle = RegularFile.OpenRead(input.Path);
        try
        {
            if (RegularFile.Identity(handle) != input.Identity)
                throw new SafetensorsException(SafetensorsError.Io, input.Path, null, "is another file than when the merge was planned (replaced meanwhile?)");
            if (RandomAccess.GetLength(handle) != input.Length)
                throw new SafetensorsException(SafetensorsError.Io, input.Path, null, "file changed size since it was planned");
            return handle;
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Asks the page cache to read the next stretch of an input once a window comes near the end of the last one.
    /// A merge reads its inputs side by side, a window of each in turn, so the kernel's own read-ahead reads each file
    /// in small pieces from far apart places on the disk: four cold SD1.5 files read side by side took 14.5 s in
    /// pieces of 4 MiB and 7.2 s in pieces of 64 MiB (`cat` of one after the other: 6.0 s). See docs/performance.md.
    /// </summary>
    private void ReadAhead(int input, long position, int length)
    {
        long end = position + length, from, to;
        lock (_readAhead)
        {
            long mark = _readAhead[input];
            // Near the end of what was asked for, or past it (a jump ahead): ask for the next stretch. Windows behind
            // the mark (the file read out of order, or read again) ask for nothing.
            if (end <= mark - _readAheadBytes / 2 || position < mark - _readAheadBytes) return;
            from = Math.Max(mark, position);
            to = Math.Min(_inputs[input].Length, position + _readAheadBytes);
            if (to <= from) return;
            _readAhead[input] = to;
        }
        // A stretch whose first and last pages are cached is taken for cached (a warm merge): asking for it anyway
        // walks its pages in the page cache, which cost a warm merge about a tenth of its system time.
        byte* basePointer = (byte*)_bases[input];
        if (PageCache.Cached(basePointer, from) && PageCache.Cached(basePointer, to - 1)) return;
        PageCache.ReadAhead(_files[input]!, from, to - from);
    }

    /// <summary>
    /// The stretch each input reads ahead: 64 MiB, less when many inputs would hold more than 2 GiB of the page cache
    /// between them (pages read ahead must still be cached when the merge gets to them).
    /// </summary>
    private static long ReadAheadFor(int inputs) => Math.Clamp((2L << 30) / Math.Max(1, inputs), 8L << 20, 64L << 20);

    private static string CurrentLength(string path)
    {
        try { return new FileInfo(path).Length.ToString(System.Globalization.CultureInfo.InvariantCulture); }
        catch (IOException) { return "unreadable"; }
    }

    private byte* Address(TermSource source, long byteOffset, int length)
    {
        var input = _inputs[source.Input];
        nint basePointer = _bases[source.Input];
        if (basePointer == 0) throw new InvalidOperationException($"input '{input.Name}' is not open");
        long position = input.Header.DataStart + source.Tensor.Begin + byteOffset;
        if (byteOffset < 0 || length < 0 || position + length > input.Length)
            throw new SafetensorsException(SafetensorsError.MissingData, input.Path, source.Tensor.Key, "window lies past the end of the file");
        return (byte*)basePointer + position;
    }

    public void Dispose()
    {
        for (int i = 0; i < _views.Length; i++)
        {
            if (_bases[i] != 0) _views[i]!.SafeMemoryMappedViewHandle.ReleasePointer();
            _bases[i] = 0;
            _views[i]?.Dispose();
            _maps[i]?.Dispose();
            _files[i]?.Dispose();
        }
    }
}
