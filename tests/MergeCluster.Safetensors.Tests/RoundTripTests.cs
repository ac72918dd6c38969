using System.Buffers.Binary;
using System.Text;
using static MergeCluster.Safetensors.Tests.SafetensorsFiles;

namespace MergeCluster.Safetensors.Tests;

public class RoundTripTests : IDisposable
{
    private readonly ScratchDirectory _dir = new();
    public void Dispose() => _dir.Dispose();

    [Fact]
    public void Every_dtype_with_scalars_and_empty_tensors_reads_back_as_written()
    {
        // Written out of key order on purpose: the file keeps the writer's order.
        var specs = new List<TensorSpec>();
        foreach (var type in Enum.GetValues<DType>())
        {
            specs.Add(Spec($"z.{type.Name()}.matrix", type, 3, 5));
            specs.Add(Spec($"a.{type.Name()}.scalar", type));
            specs.Add(Spec($"m.{type.Name()}.empty", type, 4, 0));
        }
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["modelspec.title"] = "ünïcødé \"quoted\"\nline" };
        string path = _dir.File("all.safetensors");
        var data = Write(path, specs, metadata);

        using var file = SafetensorsFile.Open(path);
        Assert.Equal(metadata, file.Header.Metadata);
        Assert.Equal(specs.Count, file.Tensors.Count);
        foreach (var spec in specs)
        {
            var t = file.Get(spec.Key);
            Assert.Equal(spec.DType, t.DType);
            Assert.Equal(spec.Shape.ToArray(), t.Shape.ToArray());
            Assert.Equal(spec.ByteLength, t.ByteLength);
            Assert.Equal(data[spec.Key], file.Bytes(t).ToArray());
        }
        Assert.Equal(1, file.Get("a.F8_E5M2.scalar").ElementCount);
        Assert.Empty(file.Get("a.F64.scalar").Shape);
        Assert.Equal(0, file.Get("m.BOOL.empty").ByteLength);
        // Tensors with bytes come back in the order they were written.
        Assert.Equal(specs.Where(s => s.ByteLength > 0).Select(s => s.Key), file.Tensors.Where(t => t.ByteLength > 0).Select(t => t.Key));
        Assert.Equal(file.Length, new FileInfo(path).Length);
    }

    [Fact]
    public void Header_is_padded_with_spaces_to_a_multiple_of_8_bytes()
    {
        foreach (int keyLength in Enumerable.Range(1, 9))
        {
            string path = _dir.File($"pad{keyLength}.safetensors");
            Write(path, [Spec(new string('k', keyLength), DType.F32, 2)]);
            var bytes = File.ReadAllBytes(path);
            ulong n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
            Assert.Equal(0UL, n % 8);
            string json = Encoding.UTF8.GetString(bytes, 8, (int)n);
            Assert.StartsWith("{", json);
            Assert.EndsWith("}", json.TrimEnd(' '));
            Assert.Equal(8 + (long)n + 8, bytes.Length);
            using var file = SafetensorsFile.Open(path);
            Assert.Equal((long)n, file.Header.HeaderLength);
        }
    }

    [Fact]
    public void A_file_without_tensors_and_a_file_of_empty_tensors_open()
    {
        string none = _dir.File("none.safetensors");
        Write(none, [], new Dictionary<string, string> { ["k"] = "v" });
        using (var file = SafetensorsFile.Open(none))
        {
            Assert.Empty(file.Tensors);
            Assert.Equal("v", file.Header.Metadata["k"]);
        }
        string empties = _dir.File("empties.safetensors");
        Write(empties, [Spec("b", DType.F16, 0), Spec("a", DType.F32, 0, 7)]);
        using (var file = SafetensorsFile.Open(empties))
        {
            Assert.Equal(["a", "b"], file.Tensors.Select(t => t.Key));
            Assert.True(file.Bytes(file.Get("a")).IsEmpty);
        }
    }

    [Fact]
    public void Windows_of_a_tensor_read_the_right_bytes_and_out_of_range_windows_are_refused()
    {
        string path = _dir.File("windows.safetensors");
        var data = Write(path, [Spec("first", DType.U8, 3), Spec("second", DType.I32, 100)]);
        using var file = SafetensorsFile.Open(path);
        var t = file.Get("second");
        Assert.Equal(data["second"].AsSpan(40, 100).ToArray(), file.Bytes(t, 40, 100).ToArray());
        Assert.Equal(file.Header.DataStart + 3, file.FileOffset(t));
        Assert.Throws<ArgumentOutOfRangeException>(() => file.Bytes(t, 390, 11).Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => file.Bytes(t, -1, 1).Length);
        var missing = Assert.Throws<SafetensorsException>(() => file.Get("third"));
        Assert.Equal(SafetensorsError.NotFound, missing.Error);
        Assert.Contains(path, missing.Message);
        Assert.Contains("third", missing.Message);
    }

    [Fact]
    public void Float_tensors_decode_through_the_reader()
    {
        string path = _dir.File("floats.safetensors");
        double[] values = [0, -0.0, 1.5, -2.25, 1024, 0.0009765625];
        var bytes = new byte[values.Length * 2];
        DTypeConvert.FromFloat64(values, DType.BF16, bytes);
        Write(path, [Spec("w", DType.BF16, 2, 3)], fill: _ => bytes);
        using var file = SafetensorsFile.Open(path);
        var decoded = new double[6];
        DTypeConvert.ToFloat64(DType.BF16, file.Bytes(file.Get("w")), decoded);
        Assert.Equal(values.Select(BitConverter.DoubleToInt64Bits), decoded.Select(BitConverter.DoubleToInt64Bits));
    }
}
