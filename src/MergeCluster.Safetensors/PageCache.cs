using System.Runtime.InteropServices;

namespace MergeCluster.Safetensors;

/// <summary>madvise hints for a file mapping; advice only, so failures and other platforms are ignored.</summary>
internal static unsafe partial class PageCache
{
    public const int Random = 1;      // MADV_RANDOM
    public const int Sequential = 2;  // MADV_SEQUENTIAL
    public const int WillNeed = 3;    // MADV_WILLNEED

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int MAdvise(void* address, nuint length, int advice);

    /// <summary>Advises on the bytes [offset, offset + length) of a mapping starting at a page boundary.</summary>
    public static void Advise(byte* mapping, long offset, long length, int advice)
    {
        if (mapping == null || length <= 0 || !OperatingSystem.IsLinux()) return;
        long page = Environment.SystemPageSize;
        long start = offset & ~(page - 1);
        MAdvise(mapping + start, (nuint)(offset + length - start), advice);
    }

    public static void Advise(byte* mapping, long length, int advice) => Advise(mapping, 0, length, advice);
}
