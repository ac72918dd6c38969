using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using static MergeCluster.Safetensors.Tests.SafetensorsFiles;

namespace MergeCluster.Safetensors.Tests;

/// <summary>
/// Checks what the reader brings into memory, by evicting a file from the page cache (posix_fadvise DONTNEED) and
/// asking which of its pages are resident afterwards (mincore). Linux only; the tests run as root.
/// </summary>
public unsafe partial class PageCacheTests
{
    private const int FadviseDontNeed = 4;

    [LibraryImport("libc", EntryPoint = "posix_fadvise")]
    private static partial int PosixFadvise(nint fd, long offset, long length, int advice);

    [LibraryImport("libc", EntryPoint = "mincore", SetLastError = true)]
    private static partial int MinCore(void* address, nuint length, byte* residency);

    private static readonly long Page = Environment.SystemPageSize;

    private static void Evict(string path)
    {
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        Assert.Equal(0, PosixFadvise(handle.DangerousGetHandle(), 0, 0, FadviseDontNeed));
    }

    /// <summary>One flag per page of the file: is it in the page cache? Asked through a fresh mapping, which faults nothing in.</summary>
    private static bool[] Residency(string path)
    {
        long length = new FileInfo(path).Length;
        using var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        using var view = map.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        try
        {
            var flags = new byte[(length + Page - 1) / Page];
            fixed (byte* f = flags)
                Assert.True(MinCore(p + view.PointerOffset, (nuint)length, f) == 0, $"mincore failed: errno {Marshal.GetLastPInvokeError()}");
            return flags.Select(b => (b & 1) != 0).ToArray();
        }
        finally { view.SafeMemoryMappedViewHandle.ReleasePointer(); }
    }

    /// <summary>Writes the file somewhere eviction works: tmpfs keeps pages whatever we advise, so try disk-backed places too.</summary>
    private static ScratchDirectory DirectoryWhereEvictionWorks(out string path, Action<string> write)
    {
        string repo = AppContext.BaseDirectory;
        while (repo.Length > 1 && !File.Exists(Path.Combine(repo, "Cluster.sln"))) repo = Path.GetDirectoryName(repo)!;
        foreach (string? parent in new[] { null, "/var/tmp", Path.Combine(repo, ".build") })
        {
            if (parent is not null && !Directory.Exists(parent)) continue;
            var dir = new ScratchDirectory(parent);
            path = dir.File("cache.safetensors");
            write(path);
            Evict(path);
            if (!Residency(path).Any(r => r)) return dir;
            dir.Dispose();
        }
        throw new InvalidOperationException("no directory found where posix_fadvise(DONTNEED) evicts a file; cannot observe the page cache here");
    }

    [Fact]
    public void Reading_one_tensor_brings_only_its_own_pages_into_memory()
    {
        if (!OperatingSystem.IsLinux()) return;
        var specs = new[] { Spec("before", DType.U8, 12 << 20), Spec("target", DType.F16, 3 << 20), Spec("after", DType.U8, 12 << 20) };
        Dictionary<string, byte[]> data = [];
        using var dir = DirectoryWhereEvictionWorks(out string path, p => data = Write(p, specs));

        long targetStart, targetEnd;
        using (var file = SafetensorsFile.Open(path))
        {
            file.AdviseRandomAccess();
            var t = file.Get("target");
            targetStart = file.FileOffset(t);
            targetEnd = targetStart + t.ByteLength;
            long sum = 0, expected = 0;
            for (long offset = 0; offset < t.ByteLength; offset += 1 << 20)
                foreach (byte b in file.Bytes(t, offset, (int)Math.Min(1 << 20, t.ByteLength - offset))) sum += b;
            foreach (byte b in data["target"]) expected += b;
            Assert.Equal(expected, sum);
        }

        var resident = Residency(path);
        long first = targetStart / Page, last = (targetEnd - 1) / Page;
        // The read itself is visible, so mincore sees what the reader did.
        Assert.True(Enumerable.Range((int)first, (int)(last - first + 1)).All(i => resident[i]), "the tensor read is not resident");
        // Reading the header may read ahead a little from the start of the file; allow the first MiB.
        long headerAllowance = (1 << 20) / Page;
        int beforeResident = Enumerable.Range(0, (int)first).Count(i => i >= headerAllowance && resident[i]);
        int afterResident = Enumerable.Range((int)last + 1, resident.Length - (int)last - 1).Count(i => resident[i]);
        Assert.True(beforeResident == 0, $"{beforeResident} pages of the tensor before the one read are resident");
        Assert.True(afterResident == 0, $"{afterResident} pages of the tensor after the one read are resident");
    }

    [Fact]
    public void Prefetch_brings_a_window_into_the_page_cache_without_reading_it()
    {
        if (!OperatingSystem.IsLinux()) return;
        var specs = new[] { Spec("a", DType.U8, 4 << 20), Spec("b", DType.U8, 8 << 20) };
        using var dir = DirectoryWhereEvictionWorks(out string path, p => Write(p, specs));
        using var file = SafetensorsFile.Open(path);
        file.AdviseRandomAccess();
        var b = file.Get("b");
        file.Prefetch(b, 2 << 20, 1 << 20);
        long from = (file.FileOffset(b) + (2 << 20)) / Page, to = (file.FileOffset(b) + (3 << 20) - 1) / Page;
        // WILLNEED starts the reads; wait (boundedly) for them to land.
        bool[] resident = [];
        for (int attempt = 0; attempt < 200; attempt++)
        {
            resident = Residency(path);
            if (Enumerable.Range((int)from, (int)(to - from + 1)).All(i => resident[i])) break;
            Thread.Sleep(25);
        }
        Assert.True(Enumerable.Range((int)from, (int)(to - from + 1)).All(i => resident[i]), "prefetched window is not resident");
        Assert.False(resident[(int)((file.FileOffset(b) + (6 << 20)) / Page)], "prefetch went far beyond its window");
        Assert.Throws<ArgumentOutOfRangeException>(() => file.Prefetch(b, 8 << 20, 1));
    }
}
