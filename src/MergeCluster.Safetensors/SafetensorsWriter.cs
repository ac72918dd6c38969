using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.Win32.SafeHandles;

namespace MergeCluster.Safetensors;

/// <summary>
/// Writes a planned file: the header goes first, tensor bytes land in their ranges in any order and from any thread,
/// and <see cref="Commit"/> fsyncs and renames. Until then the target path is never touched, and the file written is
/// always one this writer created (see <see cref="OutputTemp"/>), never one a symlink leads to.
/// </summary>
/// <remarks>
/// The whole pages of a large <see cref="OutputBuffer.WriteBehind"/> go to the disk directly (O_DIRECT) when the caller placed its
/// bytes at an address that agrees with their file offset modulo <see cref="DirectAlignment"/> (<see cref="OutputBuffer"/> does): written
/// through the page cache, a merge's output cost more system time than all of its arithmetic, for a copy into pages
/// nobody reads again before the fsync. A partial page at a write's end, and a write too small to go directly, are left
/// to the caller to send with its next write; what is left over at the end (a shard's ends, which it may share with
/// its neighbours) goes through the page cache. No page is ever written both ways.
/// </remarks>
public sealed class SafetensorsWriter : IDisposable
{
    /// <summary>File offset and memory alignment of the bytes written directly: the page size, which every Linux filesystem with O_DIRECT accepts.</summary>
    public const int DirectAlignment = 4096;
    /// <summary>Fewer bytes than this are left to the caller to gather with what follows: a direct write waits for the disk.</summary>
    internal const int MinDirectBytes = 64 << 10;

    private SafeFileHandle? _handle;
    private SafeFileHandle? _direct;
    private volatile bool _directRefused;
    private bool _committed;
    private readonly bool _owner;

    private SafetensorsWriter(string targetPath, string tempPath, FileIdentity identity, SafetensorsLayout layout, SafeFileHandle handle, bool owner)
    {
        TargetPath = targetPath;
        TempPath = tempPath;
        TempIdentity = identity;
        Layout = layout;
        _handle = handle;
        _direct = RegularFile.ReopenDirect(handle);
        _owner = owner;
    }

    public string TargetPath { get; }
    public string TempPath { get; }
    /// <summary>The temporary file's (device, inode): whoever opens it again by path checks it is still this file.</summary>
    public FileIdentity TempIdentity { get; }
    public SafetensorsLayout Layout { get; }

    /// <summary>
    /// Creates a temporary file beside the target, its blocks allocated (so a full disk fails now, not after the
    /// merge), and writes the header into it. <paramref name="job"/> names a
    /// cluster job's file, which other processes fill and commit (<see cref="OpenExisting"/>, <see cref="CommitExisting"/>);
    /// without it the file belongs to this process alone, and stale files of dead runs in the directory are removed first.
    /// </summary>
    public static SafetensorsWriter Create(string targetPath, SafetensorsLayout layout, long? job = null)
    {
        string full = Path.GetFullPath(targetPath);
        var (temp, handle) = OutputTemp.Create(full, job);
        try
        {
            if (!RegularFile.Preallocate(handle, full, layout.TotalLength)) RandomAccess.SetLength(handle, layout.TotalLength);
            RandomAccess.Write(handle, layout.HeaderBytes, 0);
            return new SafetensorsWriter(full, temp, RegularFile.Identity(handle), layout, handle, owner: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            DeleteAndClose(temp, handle);
            throw new SafetensorsException(SafetensorsError.Io, full, null, $"cannot create output: {e.Message}", e);
        }
        catch
        {
            DeleteAndClose(temp, handle);
            throw;
        }
    }

    /// <summary>
    /// Opens a job's temporary file that another process created with the same layout, to fill some of its ranges;
    /// refused unless the path still names the file created (<paramref name="identity"/>), so a file swapped in under
    /// its name, or a symlink, is never written.
    /// </summary>
    public static SafetensorsWriter OpenExisting(string targetPath, string tempPath, FileIdentity identity, SafetensorsLayout layout)
    {
        var handle = RegularFile.OpenOwned(tempPath, identity);
        return new SafetensorsWriter(Path.GetFullPath(targetPath), tempPath, identity, layout, handle, owner: false);
    }

    /// <summary>Writes bytes at an offset within one tensor, through the page cache; thread-safe (positional writes).</summary>
    public void Write(TensorInfo tensor, long offsetInTensor, ReadOnlySpan<byte> bytes) =>
        WriteAt(FileOffset(tensor, offsetInTensor, bytes.Length), bytes);

    /// <summary>
    /// Writes <paramref name="bytes"/> at file offset <paramref name="offset"/> as <see cref="Write"/> does, except that
    /// when they are placed for it (see the remarks) their whole pages go to the disk directly, in the background: the
    /// task ends when every byte is written, and the bytes must stay as they are until then. The partial page at the
    /// start is written before it returns. The last <paramref name="kept"/> bytes are left to the caller, to write with
    /// the bytes that follow them or through <see cref="WriteAt"/>: those after the last whole page, or all of them when
    /// they are too few to go directly. Where nothing can go directly, everything is written at once and none is left.
    /// </summary>
    internal Task WriteBehind(long offset, ReadOnlyMemory<byte> bytes, out int kept)
    {
        kept = 0;
        var span = bytes.Span;
        if (_direct is { } direct && !_directRefused)
        {
            if (bytes.Length < MinDirectBytes)
            {
                kept = bytes.Length;
                return Task.CompletedTask;
            }
            int head = (int)(-offset & (DirectAlignment - 1));
            int body = (bytes.Length - head) & -DirectAlignment;
            if (body > 0 && IsPlaced(span[head..]))
            {
                Debug.Assert((offset + head) % DirectAlignment == 0 && body % DirectAlignment == 0);
                if (head > 0) RandomAccess.Write(Handle, span[..head], offset);
                kept = bytes.Length - head - body;
                return WriteDirect(direct, bytes.Slice(head, body), offset + head);
            }
        }
        RandomAccess.Write(Handle, span, offset);
        return Task.CompletedTask;
    }

    /// <summary>Writes bytes at a file offset through the page cache (the partial pages an <see cref="OutputBuffer"/> kept back).</summary>
    internal void WriteAt(long offset, ReadOnlySpan<byte> bytes) => RandomAccess.Write(Handle, bytes, offset);

    /// <summary>Whether whole pages of writes go to the disk directly (false where the filesystem refused O_DIRECT).</summary>
    public bool WritesDirect => _direct is not null && !_directRefused;

    /// <summary>
    /// Whole pages with O_DIRECT. A filesystem that refuses the write (some accept the open and not the write) gets
    /// these pages, and every later write, through the page cache instead.
    /// </summary>
    private async Task WriteDirect(SafeFileHandle direct, ReadOnlyMemory<byte> pages, long offset)
    {
        try { await RandomAccess.WriteAsync(direct, pages, offset).ConfigureAwait(false); }
        catch (IOException)
        {
            _directRefused = true;
            RandomAccess.Write(Handle, pages.Span, offset);
        }
    }

    private static unsafe bool IsPlaced(ReadOnlySpan<byte> pages)
    {
        fixed (byte* p = pages) return ((nint)p & (DirectAlignment - 1)) == 0;
    }

    internal long FileOffset(TensorInfo tensor, long offsetInTensor, int length)
    {
        if (offsetInTensor < 0 || offsetInTensor + length > tensor.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(offsetInTensor), $"write past the end of '{tensor.Key}'");
        return Layout.FileOffset(tensor) + offsetInTensor;
    }

    /// <summary>
    /// Writes the header of <paramref name="layout"/> over the one written at creation: a layout that differs only in
    /// metadata values of the same length (hashes known only once the data is written).
    /// </summary>
    public void RewriteHeader(SafetensorsLayout layout)
    {
        if (layout.DataStart != Layout.DataStart || layout.TotalLength != Layout.TotalLength)
            throw new InvalidOperationException($"{TempPath}: a header of {layout.DataStart} bytes cannot replace one of {Layout.DataStart}");
        RandomAccess.Write(Handle, layout.HeaderBytes, 0);
    }

    /// <summary>The open temporary file, for hints such as write-back (never for writes that bypass <see cref="Write"/>).</summary>
    public SafeFileHandle Handle => _handle ?? throw new ObjectDisposedException(nameof(SafetensorsWriter));

    /// <summary>Flushes the data to disk without renaming (used by silos before they report a range done).</summary>
    public void Flush() => RandomAccess.FlushToDisk(Handle);

    /// <summary>fsyncs the temporary file, renames it over the target (a link there is replaced, not followed), and fsyncs the directory.</summary>
    public void Commit()
    {
        RandomAccess.FlushToDisk(Handle);
        RegularFile.Rename(TempPath, TargetPath);
        _committed = true;
        // The lock goes with the handle, after the rename: until then the file is a live run's, not a dead one's.
        CloseDirect();
        _handle!.Dispose();
        _handle = null;
        FileDurability.SyncDirectory(Path.GetDirectoryName(TargetPath)!);
    }

    /// <summary>Commits a job's temporary file created by another process: checks it is still that file, fsyncs it, renames it over the target, fsyncs the directory.</summary>
    public static void CommitExisting(string tempPath, FileIdentity identity, string targetPath)
    {
        using (var handle = RegularFile.OpenOwned(tempPath, identity, write: false))
            RandomAccess.FlushToDisk(handle);
        RegularFile.Rename(tempPath, targetPath);
        FileDurability.SyncDirectory(Path.GetDirectoryName(Path.GetFullPath(targetPath))!);
    }

    /// <summary>Closes the temporary file without removing it: a cluster job's file outlives the process that created it.</summary>
    public void Detach()
    {
        CloseDirect();
        _handle?.Dispose();
        _handle = null;
    }

    private void CloseDirect()
    {
        _direct?.Dispose();
        _direct = null;
    }

    private static void DeleteAndClose(string temp, SafeFileHandle handle)
    {
        try { RegularFile.DeleteIfOwned(temp, RegularFile.Identity(handle)); }
        catch (Exception e) when (e is IOException or SafetensorsException) { }
        handle.Dispose();
    }

    /// <summary>Without a commit, the temporary file this writer created is removed and the target stays as it was.</summary>
    public void Dispose()
    {
        CloseDirect();
        if (_handle is null) return;
        if (_owner && !_committed) DeleteAndClose(TempPath, _handle);
        else _handle.Dispose();
        _handle = null;
    }
}

/// <summary>
/// Names, creates and cleans up the temporary files beside an output. A file is created with O_CREAT|O_EXCL|O_NOFOLLOW
/// under a random name in the output's directory, so no planted symlink is followed and no two runs share one; the name
/// keeps at most <see cref="StemBytes"/> bytes of the output's name, so it fits NAME_MAX whatever the output is called.
/// A process that owns its file from creation to rename holds an exclusive flock on it meanwhile; a file of that naming
/// whose lock anyone can take belongs to a dead run (SIGKILL, power loss) and the next run in the directory removes it.
/// A cluster job's file (named after the job) lives across processes, holds no lock between them, and is never removed
/// that way: the job's cleanup removes it.
/// </summary>
public static partial class OutputTemp
{
    /// <summary>Bytes of the output's file name kept in a temporary name: the rest of the 255 is the random part and suffix.</summary>
    public const int StemBytes = 96;
    private const string Suffix = ".tmp";

    [GeneratedRegex(@"^\..*\.mc-[0-9a-f]{16}\.tmp$", RegexOptions.Singleline | RegexOptions.CultureInvariant)]
    private static partial Regex OwnedByOneProcess();

    /// <summary>
    /// A new temporary file beside <paramref name="target"/>, open for writing, locked when <paramref name="job"/> is
    /// null (and stale ones removed first). It is created under a name the sweep ignores, locked, then renamed to its
    /// real name, so no sweep ever sees it unlocked.
    /// </summary>
    public static (string Path, SafeFileHandle Handle) Create(string target, long? job = null)
    {
        string dir = Path.GetDirectoryName(target)!;
        if (job is null) RemoveStale(dir);
        string name = Name(target, job, Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8)));
        string creating = Path.Combine(dir, name[..^Suffix.Length] + ".new");
        string path = Path.Combine(dir, name);
        SafeFileHandle handle;
        try { handle = RegularFile.CreateNew(creating); }
        catch (SafetensorsException e)
        {
            throw new SafetensorsException(SafetensorsError.Io, target, null,
                $"cannot create output: {(e.Error == SafetensorsError.NotFound ? $"directory {dir} not found" : $"{dir}: {e.Detail}")}", e);
        }
        try
        {
            if (job is null) RegularFile.TryLock(handle);
            RegularFile.Rename(creating, path);
            return (path, handle);
        }
        catch
        {
            RegularFile.DeleteIfOwned(creating, RegularFile.Identity(handle));
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Writes a whole small file (a report, a plot, a recipe) the way a merge writes its output: into a temporary file
    /// from <see cref="Create"/> (exclusive, random name, locked), fsynced, renamed over <paramref name="target"/> (a link
    /// there is replaced, never followed). A failure removes the temporary file and leaves the target as it was.
    /// </summary>
    public static void WriteWhole(string target, ReadOnlySpan<byte> content)
    {
        string full = Path.GetFullPath(target);
        var (temp, handle) = Create(full);
        bool renamed = false;
        try
        {
            RandomAccess.Write(handle, content, 0);
            RandomAccess.FlushToDisk(handle);
            RegularFile.Rename(temp, full);
            renamed = true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SafetensorsException(SafetensorsError.Io, full, null, $"cannot write: {e.Message}", e);
        }
        finally
        {
            if (!renamed) RegularFile.DeleteIfOwned(temp, RegularFile.Identity(handle));
            handle.Dispose();
        }
        FileDurability.SyncDirectory(Path.GetDirectoryName(full)!);
    }

    /// <summary>".{start of the output's name}.mc-{random}.tmp", or ".mc-job{id}-{random}" for a cluster job.</summary>
    public static string Name(string target, long? job, string random)
    {
        string file = Path.GetFileName(target);
        int keep = 0, bytes = 0;
        while (keep < file.Length)
        {
            int width = char.IsSurrogatePair(file, keep) ? 2 : 1;
            int size = Encoding.UTF8.GetByteCount(file.AsSpan(keep, width));
            if (bytes + size > StemBytes) break;
            bytes += size;
            keep += width;
        }
        return job is null ? $".{file[..keep]}.mc-{random}{Suffix}" : $".{file[..keep]}.mc-job{job}-{random}{Suffix}";
    }

    /// <summary>
    /// Removes temporary files of dead runs from <paramref name="directory"/>: only names of this tool's single-process
    /// form, only regular files (a symlink is not followed), and only when their lock can be taken, which no live
    /// owner allows. Best effort; returns how many were removed.
    /// </summary>
    public static int RemoveStale(string directory)
    {
        int removed = 0;
        IEnumerable<string> names;
        try { names = Directory.EnumerateFiles(directory, ".*" + Suffix).Select(Path.GetFileName).Where(n => OwnedByOneProcess().IsMatch(n!))!; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return 0; }
        foreach (string name in names.ToList())
        {
            string path = Path.Combine(directory, name);
            try
            {
                var identity = RegularFile.IdentityOf(path);
                if (identity is null) continue;
                using var handle = RegularFile.OpenOwned(path, identity.Value, write: false);
                if (RegularFile.TryLock(handle) && RegularFile.DeleteIfOwned(path, identity.Value)) removed++;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or SafetensorsException) { }
        }
        return removed;
    }
}

/// <summary>fsync for directories, which .NET does not expose: a rename is durable only once its directory is synced.</summary>
public static partial class FileDurability
{
    [System.Runtime.InteropServices.LibraryImport("libc", SetLastError = true, StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);
    [System.Runtime.InteropServices.LibraryImport("libc", SetLastError = true)]
    private static partial int fsync(int fd);
    [System.Runtime.InteropServices.LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);

    public static void SyncDirectory(string dir)
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) return;
        int fd = open(dir, 0 /* O_RDONLY */);
        if (fd < 0) return;
        fsync(fd);
        close(fd);
    }
}
