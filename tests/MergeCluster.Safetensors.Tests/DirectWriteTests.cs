using static MergeCluster.Safetensors.Tests.SafetensorsFiles;

namespace MergeCluster.Safetensors.Tests;

/// <summary>
/// The writer's direct path (<see cref="OutputBuffer.WriteBehind"/>), observed through the page cache: a page written with O_DIRECT is not resident afterwards,
/// one written through the page cache is (nothing evicts it between the write and the check).
/// </summary>
public partial class PageCacheTests
{
    private const int ChunkBytes = 512 << 10;

    [Fact]
    public void Whole_pages_of_placed_writes_go_to_the_disk_directly_and_every_other_byte_through_the_page_cache()
    {
        if (!OperatingSystem.IsLinux()) return;
        // Unaligned tensor starts and ends, written in chunks one after the other as an executor writes a shard.
        // "head", the last chunk of "big" and "small" are under the direct threshold, so they are kept back and go to
        // the disk at the head of the next chunk; so do the partial pages where "big" and "exact" cross from one chunk
        // to the next. "misplaced" comes from a buffer whose address does not agree with its file offset, so it and
        // what was kept before it cannot go directly. "last" is kept back with nothing after it: Drain writes it.
        var specs = new[]
        {
            Spec("head", DType.U8, 1000), Spec("big", DType.U8, (3 << 20) + 123), Spec("small", DType.U8, 10_000),
            Spec("exact", DType.U8, 1 << 20), Spec("misplaced", DType.U8, 1 << 20), Spec("last", DType.U8, 5000),
        };
        using var dir = DirectoryWhereEvictionWorks(out _, p => Write(p, [Spec("probe", DType.U8, 1 << 16)]));
        string path = dir.File("direct.safetensors");
        var layout = SafetensorsLayout.Create(specs, null);
        var data = specs.ToDictionary(s => s.Key, s => RandomBytes(s.Key, checked((int)s.ByteLength)));
        var buffer = new OutputBuffer(ChunkBytes);
        using (var writer = SafetensorsWriter.Create(path, layout))
        {
            Assert.True(writer.WritesDirect, $"O_DIRECT refused in {dir.Path}");
            foreach (var spec in specs)
            {
                var tensor = layout[spec.Key];
                var bytes = data[spec.Key];
                for (int offset = 0; offset < bytes.Length; offset += ChunkBytes)
                {
                    int n = Math.Min(ChunkBytes, bytes.Length - offset);
                    long at = layout.FileOffset(tensor) + offset;
                    var chunk = buffer.Place(spec.Key == "misplaced" ? at + 1 : at, n);
                    bytes.AsSpan(offset, n).CopyTo(chunk);
                    buffer.WriteBehind(writer, tensor, offset, n);
                }
            }
            buffer.Drain();
            writer.Commit();
        }

        // Every whole page from the first tensor's to the end of "exact" went directly; the page the first tensor starts
        // in, the header's and everything from the end of "exact" on went through the page cache.
        long exactEnd = layout.FileOffset(layout["exact"]) + layout["exact"].ByteLength;
        long directFrom = (layout.DataStart + Page - 1) / Page, directTo = exactEnd / Page;
        var resident = Residency(path);
        for (int page = 0; page < resident.Length; page++)
        {
            bool wentDirect = page >= directFrom && page < directTo;
            Assert.True(resident[page] != wentDirect,
                $"page {page} of {resident.Length - 1}: {(wentDirect ? "written directly but resident" : "written through the page cache but not resident")}");
        }
        foreach (var spec in specs)
        {
            var tensor = layout[spec.Key];
            Assert.True(data[spec.Key].AsSpan().SequenceEqual(ReadWithFileStream(path, layout.FileOffset(tensor), (int)tensor.ByteLength)), $"'{spec.Key}' differs");
        }
    }
}
