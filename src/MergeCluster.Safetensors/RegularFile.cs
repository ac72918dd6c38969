using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace MergeCluster.Safetensors;

/// <summary>
/// Which file a path names: two paths reach the same file exactly when device and inode agree (hard links, symlinks,
/// bind mounts). The birth time, where the filesystem keeps one, tells a file from a later one that reuses its inode
/// number after it was deleted; it is 0 where unknown.
/// </summary>
public readonly record struct FileIdentity(ulong Device, ulong Inode, long Birth = 0)
{
    public override string ToString() => $"{Device}:{Inode}:{Birth}";

    public static bool TryParse(string? text, out FileIdentity identity)
    {
        identity = default;
        var parts = (text ?? "").Split(':');
        if (parts.Length != 3
            || !ulong.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out ulong device)
            || !ulong.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out ulong inode)
            || !long.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out long birth))
            return false;
        identity = new FileIdentity(device, inode, birth);
        return true;
    }
}

/// <summary>
/// How the tool opens files it did not just create (Linux system calls, because .NET's File API follows symlinks
/// and blocks on a FIFO). Only regular files are used, checked on the open handle (fstat), and opened with O_NONBLOCK so
/// that a FIFO or device named as a model or recipe is refused at once instead of blocking forever. Files the tool
/// writes (temporary outputs) are created with O_CREAT|O_EXCL and reopened with O_NOFOLLOW, so a planted symlink is
/// never written through.
/// </summary>
public static partial class RegularFile
{
    // asm-generic values, except where arm, arm64 and powerpc differ.
    private static readonly int NoFollow = RuntimeInformation.ProcessArchitecture is Architecture.Arm or Architecture.Arm64 or Architecture.Ppc64le ? 0x8000 : 0x20000;
    private static readonly int Direct = RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.Arm or Architecture.Arm64 => 0x10000,
        Architecture.Ppc64le => 0x20000,
        _ => 0x4000,
    };
    private const int ReadOnly = 0, WriteOnly = 1, ReadWrite = 2, Create = 0x40, Exclusive = 0x80, NonBlock = 0x800, CloseOnExec = 0x80000;
    private const int AtFdCwd = -100, AtSymlinkNoFollow = 0x100, AtEmptyPath = 0x1000;
    private const uint StatxBasicStats = 0x7ff, StatxBirthTime = 0x800;
    private const int LockExclusive = 2, LockNonBlocking = 4;
    private const int FGetFl = 3, FSetFl = 4;
    private const int ENoEnt = 2, EAccess = 13, EExist = 17, ELoop = 40, ENotDir = 20, EIsDir = 21, ENoSpc = 28, ENoSys = 38, EOpNotSupp = 95;

    [StructLayout(LayoutKind.Explicit, Size = 256)]
    private struct Statx
    {
        [FieldOffset(0)] public uint Mask;
        [FieldOffset(28)] public ushort Mode;
        [FieldOffset(32)] public ulong Inode;
        [FieldOffset(40)] public ulong Size;
        [FieldOffset(80)] public long BirthSeconds;
        [FieldOffset(88)] public uint BirthNanoseconds;
        [FieldOffset(136)] public uint DeviceMajor;
        [FieldOffset(140)] public uint DeviceMinor;

        public readonly FileIdentity Identity => new(((ulong)DeviceMajor << 32) | DeviceMinor, Inode,
            (Mask & StatxBirthTime) != 0 ? BirthSeconds * 1_000_000_000 + BirthNanoseconds : 0);
        public readonly int Type => Mode & 0xF000;
    }

    private const int TypeRegular = 0x8000;

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int StatxPath(int directory, string path, int flags, uint mask, out Statx result);

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int StatxHandle(SafeHandle handle, string path, int flags, uint mask, out Statx result);

    [LibraryImport("libc", EntryPoint = "flock", SetLastError = true)]
    private static partial int Flock(SafeHandle handle, int operation);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(SafeHandle handle, int command, int argument);

    [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
    private static partial int Fallocate(SafeHandle handle, int mode, long offset, long length);

    [LibraryImport("libc", EntryPoint = "rename", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int RenameFile(string from, string to);

    [LibraryImport("libc", EntryPoint = "mkdir", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int MakeDirectory(string path, int mode);

    [LibraryImport("libc", EntryPoint = "unlink", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int UnlinkFile(string path);

    /// <summary>
    /// Opens an existing regular file for reading, following symlinks (models often are links into a download cache).
    /// A FIFO, socket, device or directory is refused without blocking; the error names the path.
    /// </summary>
    public static SafeFileHandle OpenRead(string path) => OpenExisting(path, ReadOnly);

    /// <summary>Opens a file this tool created for writing again, never through a symlink, and only if it is still <paramref name="expected"/>.</summary>
    public static SafeFileHandle OpenOwned(string path, FileIdentity expected, bool write = true)
    {
        var handle = OpenExisting(path, (write ? ReadWrite : ReadOnly) | NoFollow);
        if (Identity(handle) != expected)
        {
            handle.Dispose();
            throw new SafetensorsException(SafetensorsError.Io, path, null, "is no longer the temporary file this merge created (replaced by another file?)");
        }
        return handle;
    }

    /// <summary>Creates a new file, refusing any existing entry at the path, a symlink included (O_CREAT|O_EXCL|O_NOFOLLOW).</summary>
    public static SafeFileHandle CreateNew(string path)
    {
        CheckPath(path);
        int fd = Open(path, ReadWrite | Create | Exclusive | NoFollow | CloseOnExec, 0x1B6 /* 0666, less the umask */);
        if (fd < 0) throw Failure(path, Marshal.GetLastPInvokeError(), "cannot create");
        return new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>
    /// A second, write-only handle on an open file, with O_DIRECT, for writes that bypass the page cache. It is opened
    /// through /proc/self/fd, which reopens the open file's own inode rather than resolving a path, and checked to be
    /// that file. Null where the system or the filesystem does not allow it (no /proc, tmpfs, some FUSE).
    /// </summary>
    public static SafeFileHandle? ReopenDirect(SafeFileHandle handle)
    {
        if (!OperatingSystem.IsLinux()) return null;
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            int fd = Open($"/proc/self/fd/{handle.DangerousGetHandle()}", WriteOnly | Direct | CloseOnExec, 0);
            if (fd < 0) return null;
            var direct = new SafeFileHandle(fd, ownsHandle: true);
            if (Identity(direct) == Identity(handle)) return direct;
            direct.Dispose();
            return null;
        }
        finally
        {
            if (added) handle.DangerousRelease();
        }
    }

    /// <summary>Creates a directory that must not exist yet (mkdir(2), mode 0700): nothing planted there is ever used.</summary>
    public static void CreateDirectory(string path)
    {
        CheckPath(path);
        if (MakeDirectory(path, 0x1C0) != 0) throw Failure(path, Marshal.GetLastPInvokeError(), "cannot create directory");
    }

    /// <summary>The identity of an open file.</summary>
    public static FileIdentity Identity(SafeFileHandle handle) => Stat(handle, "(open file)").Identity;

    /// <summary>The identity of the file a path leads to, through symlinks; null when nothing is there (or a dangling link).</summary>
    public static FileIdentity? IdentityOf(string path)
    {
        CheckPath(path);
        if (StatxPath(AtFdCwd, path, 0, StatxBasicStats | StatxBirthTime, out var st) == 0) return st.Identity;
        int errno = Marshal.GetLastPInvokeError();
        return errno is ENoEnt or ENotDir ? null : throw Failure(path, errno, "cannot stat");
    }

    /// <summary>
    /// Takes an exclusive advisory lock (flock) without waiting; false when another open file holds one, or when the
    /// filesystem has no locks (then nobody can take one, and a leftover is never mistaken for a dead run's).
    /// </summary>
    public static bool TryLock(SafeFileHandle handle) => Flock(handle, LockExclusive | LockNonBlocking) == 0;

    /// <summary>
    /// Allocates the blocks of [0, <paramref name="length"/>) up front (fallocate(2), mode 0, which also sets the
    /// size): a disk too small fails here, before any work, and writes into the file need no block reservation each.
    /// False, with the file unchanged, where the filesystem cannot (NFS, some FUSE): it then allocates as it is written.
    /// </summary>
    public static bool Preallocate(SafeFileHandle handle, string path, long length)
    {
        if (length <= 0 || Fallocate(handle, 0, 0, length) == 0) return true;
        int errno = Marshal.GetLastPInvokeError();
        if (errno is EOpNotSupp or ENoSys) return false;
        throw errno == ENoSpc
            ? new SafetensorsException(SafetensorsError.Io, path, null, $"not enough disk space for the output ({length:N0} bytes)")
            : Failure(path, errno, "cannot allocate the output");
    }

    /// <summary>rename(2): replaces whatever entry <paramref name="to"/> names (a symlink is replaced, never followed).</summary>
    public static void Rename(string from, string to)
    {
        CheckPath(from);
        CheckPath(to);
        if (RenameFile(from, to) != 0) throw Failure(to, Marshal.GetLastPInvokeError(), "cannot rename the finished file into place");
    }

    /// <summary>Removes <paramref name="path"/> if it is still the file <paramref name="expected"/> (not followed through a link); true when removed.</summary>
    public static bool DeleteIfOwned(string path, FileIdentity expected)
    {
        if (path.Contains('\0') || StatxPath(AtFdCwd, path, AtSymlinkNoFollow, StatxBasicStats | StatxBirthTime, out var st) != 0 || st.Identity != expected) return false;
        return UnlinkFile(path) == 0;
    }

    /// <summary>Reads a small regular file as UTF-8 text (a recipe); larger than <paramref name="maxBytes"/> is an error naming the limit.</summary>
    public static string ReadText(string path, long maxBytes, string what)
    {
        using var handle = OpenRead(path);
        long length = RandomAccess.GetLength(handle);
        if (length > maxBytes)
            throw new SafetensorsException(SafetensorsError.Io, path, null, $"{what} is {length:N0} bytes, over the {maxBytes:N0}-byte limit");
        var bytes = new byte[length];
        int total = 0;
        while (total < bytes.Length)
        {
            int n = RandomAccess.Read(handle, bytes.AsSpan(total), total);
            if (n <= 0) break;
            total += n;
        }
        var span = bytes.AsSpan(0, total);
        if (span.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF])) span = span[3..];
        return Encoding.UTF8.GetString(span);
    }

    private static SafeFileHandle OpenExisting(string path, int flags)
    {
        CheckPath(path);
        int fd = Open(path, flags | NonBlock | CloseOnExec, 0);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw errno == ELoop && (flags & NoFollow) != 0
                ? new SafetensorsException(SafetensorsError.Io, path, null, "is a symbolic link, which is never written through")
                : Failure(path, errno, "cannot open");
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            var st = Stat(handle, path);
            if (st.Type != TypeRegular)
                throw new SafetensorsException(SafetensorsError.NotRegularFile, path, null, $"is {Describe(st.Type)}, not a regular file; only regular files are read");
            // O_NONBLOCK only kept open() from waiting on a FIFO; on a regular file it means nothing, so clear it
            // rather than let .NET take the handle for an asynchronous one.
            int status = Fcntl(handle, FGetFl, 0);
            if (status >= 0) Fcntl(handle, FSetFl, status & ~NonBlock);
            return handle;
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static Statx Stat(SafeFileHandle handle, string path)
    {
        Debug.Assert(!handle.IsInvalid);
        if (StatxHandle(handle, "", AtEmptyPath, StatxBasicStats | StatxBirthTime, out var st) != 0) throw Failure(path, Marshal.GetLastPInvokeError(), "cannot stat");
        return st;
    }

    private static string Describe(int type) => type switch
    {
        0x1000 => "a FIFO (named pipe)",
        0x2000 => "a character device",
        0x4000 => "a directory",
        0x6000 => "a block device",
        0xC000 => "a socket",
        _ => "not a file",
    };

    /// <summary>The C calls would silently cut a path at a NUL; such a path names no file.</summary>
    private static void CheckPath(string path)
    {
        if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("MergeCluster opens files with Linux system calls (statx, O_NOFOLLOW, flock)");
        if (path.Contains('\0'))
            throw new SafetensorsException(SafetensorsError.Io, path.Replace("\0", "\\0"), null, "path contains a NUL character");
    }

    private static SafetensorsException Failure(string path, int errno, string action) => errno switch
    {
        ENoEnt or ENotDir => new SafetensorsException(SafetensorsError.NotFound, path, null, "file not found"),
        EAccess => new SafetensorsException(SafetensorsError.Io, path, null, $"{action}: permission denied"),
        EExist => new SafetensorsException(SafetensorsError.Io, path, null, $"{action}: something already exists there"),
        EIsDir => new SafetensorsException(SafetensorsError.NotRegularFile, path, null, $"{action}: is a directory"),
        _ => new SafetensorsException(SafetensorsError.Io, path, null, $"{action}: {Marshal.GetPInvokeErrorMessage(errno)}"),
    };
}
