using System.Runtime.InteropServices;

namespace MergeCluster.Safetensors;

/// <summary>madvise hints for a file mapping; advice only, so failures and other platforms are ignored.</summary>
public static unsafe partial class PageCache
{
    public const int Random = 1;      // MADV_RANDOM
    public const int Sequential = 2;  // MADV_SEQUENTIAL
    public const int WillNeed = 3;    // MADV_WILLNEED
    /// <summary>MADV_DONTNEED: unmaps the range's pages from this process; a file's pages stay in the page cache.</summary>
    public const int DontNeed = 4;
    /// <summary>MADV_POPULATE_READ (Linux 5.14): maps the range's cached pages in one call instead of one fault per 64 KiB.</summary>
    public const int PopulateRead = 22;

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int MAdvise(void* address, nuint length, int advice);

    /// <summary>
    /// Advises on every page that overlaps the bytes [offset, offset + length) of a mapping (madvise works on whole
    /// pages). Neighbouring bytes share those pages, which is harmless for read-only file mappings: a page dropped early
    /// is simply mapped again on its next touch.
    /// </summary>
    public static void Advise(byte* mapping, long offset, long length, int advice)
    {
        if (mapping == null || length <= 0 || !OperatingSystem.IsLinux()) return;
        nint page = Environment.SystemPageSize;
        nint first = (nint)(mapping + offset);
        nint start = first & ~(page - 1);
        MAdvise((void*)start, (nuint)(first - start + length), advice);
    }

    public static void Advise(byte* mapping, long length, int advice) => Advise(mapping, 0, length, advice);
}
