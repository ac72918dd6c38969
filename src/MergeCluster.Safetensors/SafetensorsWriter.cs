using Microsoft.Win32.SafeHandles;

namespace MergeCluster.Safetensors;

/// <summary>
/// Writes a planned file: the header goes first, tensor bytes land in their ranges in any order and from any thread,
/// and <see cref="Commit"/> fsyncs and renames. Until then the target path is never touched.
/// </summary>
public sealed class SafetensorsWriter : IDisposable
{
    private SafeFileHandle? _handle;
    private bool _committed;

    private SafetensorsWriter(string targetPath, string tempPath, SafetensorsLayout layout, SafeFileHandle handle)
    {
        TargetPath = targetPath;
        TempPath = tempPath;
        Layout = layout;
        _handle = handle;
    }

    public string TargetPath { get; }
    public string TempPath { get; }
    public SafetensorsLayout Layout { get; }

    /// <summary>
    /// Creates a sized temporary file beside the target and writes the header into it. A given
    /// <paramref name="tempPath"/> is replaced if it exists (a cluster job names its temporary file after the job).
    /// </summary>
    public static SafetensorsWriter Create(string targetPath, SafetensorsLayout layout, string? tempPath = null)
    {
        string full = Path.GetFullPath(targetPath);
        string dir = Path.GetDirectoryName(full)!;
        string temp = tempPath ?? Path.Combine(dir, $".{Path.GetFileName(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        var handle = OpenTemp(temp, tempPath is null ? FileMode.CreateNew : FileMode.Create, full);
        try
        {
            RandomAccess.SetLength(handle, layout.TotalLength);
            RandomAccess.Write(handle, layout.HeaderBytes, 0);
            return new SafetensorsWriter(full, temp, layout, handle);
        }
        catch
        {
            handle.Dispose();
            TryDelete(temp);
            throw;
        }
    }

    /// <summary>Opens a temporary file that another process created with the same layout, to fill some of its ranges.</summary>
    public static SafetensorsWriter OpenExisting(string targetPath, string tempPath, SafetensorsLayout layout)
    {
        var handle = OpenTemp(tempPath, FileMode.Open, targetPath);
        return new SafetensorsWriter(Path.GetFullPath(targetPath), tempPath, layout, handle) { _committed = true };
    }

    /// <summary>Writes bytes at an offset within one tensor; thread-safe (positional writes).</summary>
    public void Write(TensorInfo tensor, long offsetInTensor, ReadOnlySpan<byte> bytes)
    {
        if (offsetInTensor < 0 || offsetInTensor + bytes.Length > tensor.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(offsetInTensor), $"write past the end of '{tensor.Key}'");
        RandomAccess.Write(Handle, bytes, Layout.FileOffset(tensor) + offsetInTensor);
    }

    /// <summary>Flushes the data to disk without renaming (used by silos before they report a range done).</summary>
    public void Flush() => RandomAccess.FlushToDisk(Handle);

    /// <summary>fsyncs the temporary file, renames it over the target, and fsyncs the directory.</summary>
    public void Commit()
    {
        RandomAccess.FlushToDisk(Handle);
        _handle!.Dispose();
        _handle = null;
        File.Move(TempPath, TargetPath, overwrite: true);
        _committed = true;
        FileDurability.SyncDirectory(Path.GetDirectoryName(TargetPath)!);
    }

    /// <summary>
    /// Syncs and closes the temporary file but keeps it, uncommitted, for other processes to fill through
    /// <see cref="OpenExisting"/>; whoever assembles the job commits it.
    /// </summary>
    public string Detach()
    {
        RandomAccess.FlushToDisk(Handle);
        _handle!.Dispose();
        _handle = null;
        _committed = true;
        return TempPath;
    }

    /// <summary>Commits a temporary file that <see cref="Detach"/> left behind: fsync, rename over the target, fsync the directory.</summary>
    public static void CommitExisting(string tempPath, string targetPath)
    {
        using (var handle = File.OpenHandle(tempPath, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
            RandomAccess.FlushToDisk(handle);
        File.Move(tempPath, targetPath, overwrite: true);
        FileDurability.SyncDirectory(Path.GetDirectoryName(Path.GetFullPath(targetPath))!);
    }

    private SafeFileHandle Handle => _handle ?? throw new ObjectDisposedException(nameof(SafetensorsWriter));

    private static SafeFileHandle OpenTemp(string temp, FileMode mode, string target)
    {
        try { return File.OpenHandle(temp, mode, FileAccess.ReadWrite, FileShare.ReadWrite); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SafetensorsException(SafetensorsError.Io, target, null, $"cannot create output: {e.Message}", e);
        }
    }

    private static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>Without a commit, the temporary file is removed and the target stays as it was.</summary>
    public void Dispose()
    {
        _handle?.Dispose();
        _handle = null;
        if (!_committed) TryDelete(TempPath);
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
