using System.Runtime.InteropServices;

namespace MergeCluster.Safetensors;

/// <summary>madvise hints for a file mapping; advice only, so failures and other platforms are ignored, except a populate that would fault.</summary>
public static unsafe partial class PageCache
{
    public const int Random = 1;      // MADV_RANDOM
    public const int Sequential = 2;  // MADV_SEQUENTIAL
    public const int WillNeed = 3;    // MADV_WILLNEED
    /// <summary>MADV_DONTNEED: unmaps the range's pages from this process; a file's pages stay in the page cache.</summary>
    public const int DontNeed = 4;
    /// <summary>
    /// MADV_HUGEPAGE: a fault on a file mapping reads ahead in 2 MiB folios, which the kernel maps with one page-table
    /// entry each (the mapping is 2 MiB-aligned) instead of 512.
    /// </summary>
    public const int HugePage = 14;
    /// <summary>MADV_POPULATE_READ (Linux 5.14): maps the range's cached pages in one call instead of one fault per 64 KiB.</summary>
    public const int PopulateRead = 22;

    private const int EFault = 14;
    private const int FadviseWillNeed = 3; // POSIX_FADV_WILLNEED

    [LibraryImport("libc", EntryPoint = "mincore", SetLastError = true)]
    private static partial int MinCore(void* address, nuint length, byte* vector);

    /// <summary>
    /// Whether the page holding byte <paramref name="offset"/> of a file mapping is in the page cache (mincore); true
    /// where that cannot be told.
    /// </summary>
    public static bool Cached(byte* mapping, long offset)
    {
        if (mapping == null || !OperatingSystem.IsLinux()) return true;
        nint page = Environment.SystemPageSize;
        byte* start = (byte*)((nint)(mapping + offset) & ~(page - 1));
        byte resident;
        return MinCore(start, (nuint)page, &resident) != 0 || (resident & 1) != 0;
    }

    [LibraryImport("libc", EntryPoint = "posix_fadvise")]
    private static partial int PosixFadvise(SafeHandle fd, long offset, long length, int advice);

    /// <summary>
    /// Starts reading [offset, offset + length) of an open file into the page cache and returns (POSIX_FADV_WILLNEED).
    /// Unlike MADV_WILLNEED on a mapping of it, which measured no faster than no advice at all, this reads the range
    /// in large pieces.
    /// </summary>
    public static void ReadAhead(Microsoft.Win32.SafeHandles.SafeFileHandle file, long offset, long length)
    {
        if (length > 0 && OperatingSystem.IsLinux()) PosixFadvise(file, offset, length, FadviseWillNeed);
    }

    [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
    private static partial int MAdvise(void* address, nuint length, int advice);

    /// <summary>
    /// Advises on every page that overlaps the bytes [offset, offset + length) of a mapping (madvise works on whole
    /// pages). Neighbouring bytes share those pages, which is harmless for read-only file mappings: a page dropped early
    /// is simply mapped again on its next touch.
    /// </summary>
    public static void Advise(byte* mapping, long offset, long length, int advice) => AdviseRange(mapping, offset, length, advice);

    public static void Advise(byte* mapping, long length, int advice) => AdviseRange(mapping, 0, length, advice);

    /// <summary>
    /// Maps the bytes [0, length) of a file mapping with <see cref="PopulateRead"/>. False only when the kernel says
    /// touching them would raise SIGBUS, which no managed code can catch: the file was truncated under the mapping.
    /// Kernels without the advice fault the pages in on first touch instead.
    /// </summary>
    public static bool Populate(byte* mapping, long length) =>
        AdviseRange(mapping, 0, length, PopulateRead) == 0 || Marshal.GetLastPInvokeError() != EFault;

    private static int AdviseRange(byte* mapping, long offset, long length, int advice)
    {
        if (mapping == null || length <= 0 || !OperatingSystem.IsLinux()) return 0;
        nint page = Environment.SystemPageSize;
        nint first = (nint)(mapping + offset);
        nint start = first & ~(page - 1);
        return MAdvise((void*)start, (nuint)(first - start + length), advice);
    }
}
