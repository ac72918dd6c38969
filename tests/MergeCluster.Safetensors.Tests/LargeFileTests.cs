using static MergeCluster.Safetensors.Tests.SafetensorsFiles;

namespace MergeCluster.Safetensors.Tests;

public class LargeFileTests : IDisposable
{
    private readonly ScratchDirectory _dir = new();
    public void Dispose() => _dir.Dispose();

    [Fact]
    public void A_sparse_file_over_4_GiB_reads_back_at_the_right_offsets()
    {
        string path = _dir.File("big.safetensors");
        // Fillers are never written, so the file stays sparse and costs almost no disk.
        var specs = new[]
        {
            Spec("start", DType.F32, 1024),
            Spec("filler.1", DType.U8, 2_500_000_000),
            Spec("middle", DType.F16, 64, 64),
            Spec("filler.2", DType.U8, 2_000_000_000),
            Spec("end", DType.BF16, 4096),
        };
        var layout = SafetensorsLayout.Create(specs, null);
        var written = new Dictionary<string, byte[]>();
        using (var writer = SafetensorsWriter.Create(path, layout))
        {
            foreach (string key in new[] { "end", "start", "middle" })
            {
                var bytes = RandomBytes(key, checked((int)layout[key].ByteLength));
                writer.Write(layout[key], 0, bytes);
                written[key] = bytes;
            }
            writer.Commit();
        }
        Assert.True(new FileInfo(path).Length > 4L << 30);
        Assert.True(layout.FileOffset(layout["end"]) > 4L << 30);

        using var file = SafetensorsFile.Open(path);
        Assert.Equal(layout.TotalLength, file.Length);
        foreach (var (key, bytes) in written)
        {
            var t = file.Get(key);
            Assert.Equal(layout.FileOffset(layout[key]), file.FileOffset(t));
            Assert.Equal(bytes, file.Bytes(t).ToArray());
            Assert.Equal(bytes, ReadWithFileStream(path, file.FileOffset(t), bytes.Length));
        }
        // A window deep inside a filler, past 2 GiB into the tensor and past 4 GiB into the file.
        var filler = file.Get("filler.2");
        long deep = filler.ByteLength - 4096;
        Assert.True(file.FileOffset(filler) + deep > 4L << 30);
        Assert.True(file.Bytes(filler, deep, 4096).IndexOfAnyExcept((byte)0) < 0);
        Assert.Throws<OverflowException>(() => file.Bytes(file.Get("filler.1")).Length);
        var last = file.Get("end");
        Assert.Equal(written["end"][^2..], file.Bytes(last, last.ByteLength - 2, 2).ToArray());
    }
}
