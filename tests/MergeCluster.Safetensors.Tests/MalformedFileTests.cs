using System.Text;
using static MergeCluster.Safetensors.Tests.SafetensorsFiles;

namespace MergeCluster.Safetensors.Tests;

/// <summary>One crafted file for each rule of the format; each must give its typed error, naming the file and the key.</summary>
public class MalformedFileTests : IDisposable
{
    private readonly ScratchDirectory _dir = new();
    public void Dispose() => _dir.Dispose();

    private static string Entry(string key, string dtype, string shape, long begin, long end) =>
        $"\"{key}\":{{\"dtype\":\"{dtype}\",\"shape\":[{shape}],\"data_offsets\":[{begin},{end}]}}";

    private SafetensorsException Refused(string path, SafetensorsError error, string? key = null)
    {
        var e = Assert.Throws<SafetensorsException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.True(error == e.Error, $"expected {error}, got {e.Error}: {e.Message}");
        Assert.Equal(path, e.File);
        Assert.Contains(path, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Equal(key, e.Key);
        if (key is not null) Assert.Contains($"'{key}'", e.Message);
        // The header-only path applies the same rules.
        Assert.Equal(error, Assert.Throws<SafetensorsException>(() => SafetensorsFile.ReadHeader(path, out _)).Error);
        return e;
    }

    private string Json(string name, string json, long dataBytes) => Raw(_dir.File(name), json, dataBytes);

    [Fact]
    public void File_shorter_than_8_bytes()
    {
        string path = _dir.File("short.safetensors");
        File.WriteAllBytes(path, [1, 0, 0]);
        Refused(path, SafetensorsError.FileTooSmall);
        File.WriteAllBytes(path, []);
        Refused(path, SafetensorsError.FileTooSmall);
    }

    [Fact]
    public void Header_length_above_100_million_is_refused_without_allocating_it()
    {
        string path = Raw(_dir.File("huge.safetensors"), "{}", 0, headerLength: 100_000_001);
        Refused(path, SafetensorsError.HeaderTooLarge);
        Refused(Raw(_dir.File("huger.safetensors"), "{}", 0, headerLength: ulong.MaxValue), SafetensorsError.HeaderTooLarge);
    }

    [Fact]
    public void Header_length_past_the_end_of_the_file_is_checked_before_allocating()
    {
        string path = Raw(_dir.File("past.safetensors"), "{}", 0, headerLength: 99_999_999);
        long before = GC.GetAllocatedBytesForCurrentThread();
        Refused(path, SafetensorsError.InvalidHeaderLength);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 1_000_000, "the reader allocated the declared header size");
        Refused(Raw(_dir.File("past1.safetensors"), "{}", 0, headerLength: 3), SafetensorsError.InvalidHeaderLength);
    }

    [Fact]
    public void Header_that_is_not_UTF8() =>
        Refused(Raw(_dir.File("utf8.safetensors"), [.. "{\"a\u00e9\":1"u8, 0xC3, 0x28, .. "}"u8], 0), SafetensorsError.InvalidHeaderUtf8);

    [Fact]
    public void Header_that_does_not_start_with_a_brace()
    {
        Refused(Json("space.safetensors", " {}", 0), SafetensorsError.InvalidHeaderStart);
        Refused(Json("array.safetensors", "[]", 0), SafetensorsError.InvalidHeaderStart);
        Refused(Json("empty.safetensors", "", 0), SafetensorsError.InvalidHeaderStart);
    }

    [Fact]
    public void Header_that_is_not_JSON()
    {
        Refused(Json("trunc.safetensors", "{\"a\":{\"dtype\":\"F32\"", 0), SafetensorsError.InvalidHeaderJson, "a");
        Refused(Json("comma.safetensors", "{" + Entry("a", "F32", "1", 0, 4) + ",}", 4), SafetensorsError.InvalidHeaderJson);
        Refused(Json("unquoted.safetensors", "{a:1}", 0), SafetensorsError.InvalidHeaderJson);
        Refused(Json("after.safetensors", "{} {}", 0), SafetensorsError.InvalidHeaderJson);
        Refused(Json("deep.safetensors", "{\"a\":{\"x\":" + new string('[', 5000) + new string(']', 5000) + "}}", 0), SafetensorsError.InvalidHeaderJson, "a");
        Refused(Json("nonobject.safetensors", "{\"a\":5}", 0), SafetensorsError.InvalidHeaderJson, "a");
        Refused(Json("lacks.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0), SafetensorsError.InvalidHeaderJson, "a");
    }

    [Fact]
    public void Metadata_that_is_not_a_map_of_strings()
    {
        Refused(Json("meta-int.safetensors", "{\"__metadata__\":{\"a\":1}}", 0), SafetensorsError.InvalidMetadata);
        Refused(Json("meta-nested.safetensors", "{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}", 0), SafetensorsError.InvalidMetadata);
        Refused(Json("meta-array.safetensors", "{\"__metadata__\":[\"a\"]}", 0), SafetensorsError.InvalidMetadata);
        Refused(Json("meta-string.safetensors", "{\"__metadata__\":\"a\"}", 0), SafetensorsError.InvalidMetadata);
    }

    [Fact]
    public void Unknown_dtype() =>
        Refused(Json("dtype.safetensors", "{" + Entry("w", "F128", "1", 0, 16) + "}", 16), SafetensorsError.UnknownDType, "w");

    [Fact]
    public void Negative_or_non_integer_shape()
    {
        Refused(Json("neg.safetensors", "{" + Entry("w", "F32", "-1", 0, 4) + "}", 4), SafetensorsError.InvalidShape, "w");
        Refused(Json("frac.safetensors", "{" + Entry("w", "F32", "1.5", 0, 4) + "}", 4), SafetensorsError.InvalidShape, "w");
        Refused(Json("str.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4), SafetensorsError.InvalidShape, "w");
    }

    [Fact]
    public void Size_that_overflows_64_bits()
    {
        Refused(Json("ovf-count.safetensors", "{" + Entry("w", "U8", "4294967296,4294967296", 0, 0) + "}", 0), SafetensorsError.SizeOverflow, "w");
        Refused(Json("ovf-bytes.safetensors", "{" + Entry("w", "F64", "4611686018427387904", 0, 0) + "}", 0), SafetensorsError.SizeOverflow, "w");
    }

    [Fact]
    public void Offsets_that_end_before_they_begin()
    {
        Refused(Json("backwards.safetensors", "{" + Entry("w", "F32", "0", 8, 4) + "}", 8), SafetensorsError.InvalidOffsets, "w");
        Refused(Json("negative.safetensors", "{" + Entry("w", "F32", "1", -4, 0) + "}", 4), SafetensorsError.InvalidOffsets, "w");
        Refused(Json("three.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 4), SafetensorsError.InvalidOffsets, "w");
    }

    [Fact]
    public void Size_that_does_not_match_the_offsets() =>
        Refused(Json("mismatch.safetensors", "{" + Entry("w", "F32", "2,3", 0, 20) + "}", 20), SafetensorsError.SizeMismatch, "w");

    [Fact]
    public void Gap_between_tensors() =>
        Refused(Json("gap.safetensors", "{" + Entry("a", "F32", "1", 0, 4) + "," + Entry("b", "F32", "1", 8, 12) + "}", 12), SafetensorsError.NonContiguous, "b");

    [Fact]
    public void Gap_before_the_first_tensor() =>
        Refused(Json("lead.safetensors", "{" + Entry("a", "F32", "1", 4, 8) + "}", 8), SafetensorsError.NonContiguous, "a");

    [Fact]
    public void Overlapping_tensors() =>
        Refused(Json("overlap.safetensors", "{" + Entry("a", "F32", "2", 0, 8) + "," + Entry("b", "F32", "2", 4, 12) + "}", 12), SafetensorsError.NonContiguous, "b");

    [Fact]
    public void Keys_out_of_data_order_in_the_JSON_are_accepted_when_contiguous()
    {
        string path = Json("order.safetensors",
            "{" + Entry("c", "F32", "1", 12, 16) + ",\"__metadata__\":{\"k\":\"v\"}," + Entry("a", "F32", "2", 4, 12) + "," + Entry("b", "F32", "1", 0, 4) + "}", 16);
        using var file = SafetensorsFile.Open(path);
        Assert.Equal(["b", "a", "c"], file.Tensors.Select(t => t.Key));
        Assert.Equal(4, file.Get("a").Begin);
        Assert.Equal("v", file.Header.Metadata["k"]);
    }

    [Fact]
    public void Trailing_bytes_after_the_data() =>
        Refused(Json("trailing.safetensors", "{" + Entry("a", "F32", "1", 0, 4) + "}", 5), SafetensorsError.TrailingBytes);

    [Fact]
    public void Data_missing_at_the_end()
    {
        Refused(Json("missing.safetensors", "{" + Entry("a", "F32", "2", 0, 8) + "}", 7), SafetensorsError.MissingData);
        Refused(Json("nodata.safetensors", "{}", 1), SafetensorsError.TrailingBytes);
    }

    [Fact]
    public void Duplicate_key()
    {
        Refused(Json("dup.safetensors", "{" + Entry("a", "F32", "1", 0, 4) + "," + Entry("a", "F32", "1", 4, 8) + "}", 8), SafetensorsError.DuplicateKey, "a");
        Refused(Json("dupmeta.safetensors", "{\"__metadata__\":{},\"__metadata__\":{}}", 0), SafetensorsError.DuplicateKey, "__metadata__");
    }

    [Fact]
    public void A_missing_file_is_NotFound() =>
        Assert.Equal(SafetensorsError.NotFound, Assert.Throws<SafetensorsException>(() => SafetensorsFile.Open(_dir.File("absent.safetensors"))).Error);

    [Theory]
    [InlineData(".ckpt")]
    [InlineData(".pt")]
    [InlineData(".bin")]
    [InlineData(".PTH")]
    public void Pickle_extensions_are_refused_even_when_the_bytes_are_safetensors(string extension)
    {
        string path = _dir.File("model" + extension);
        Write(path, [Spec("w", DType.F32, 2)]);
        var e = Refused(path, SafetensorsError.PickleRefused);
        Assert.Contains("pickle", e.Message);
    }

    [Theory]
    [InlineData(new byte[] { 0x80, 0x02, 0x7D, 0x71, 0x00, 0x28, 0x58, 0x05 })]
    [InlineData(new byte[] { 0x80, 0x04, 0x95, 0x00, 0x00, 0x00, 0x00, 0x00 })]
    [InlineData(new byte[] { (byte)'P', (byte)'K', 0x03, 0x04, 0x00, 0x00, 0x08, 0x00 })]
    public void Pickle_and_torch_zip_magic_is_refused_under_a_safetensors_name(byte[] magic)
    {
        string path = _dir.File("disguised.safetensors");
        File.WriteAllBytes(path, [.. magic, .. new byte[64]]);
        Refused(path, SafetensorsError.PickleRefused);
    }

    [Fact]
    public async Task Garbage_and_mutated_files_give_typed_errors_and_never_hang()
    {
        string valid = _dir.File("valid.safetensors");
        Write(valid, [Spec("a", DType.F16, 3, 4), Spec("b", DType.I64), Spec("c", DType.BF16, 0)], new Dictionary<string, string> { ["k"] = "v" });
        var original = File.ReadAllBytes(valid);
        var random = new Random(42);
        string path = _dir.File("mutant.safetensors");
        var work = Task.Run(() =>
        {
            for (int round = 0; round < 3000; round++)
            {
                byte[] bytes = (round % 4) switch
                {
                    0 => Mutate(original, random, flips: 1 + random.Next(4)),
                    1 => original[..random.Next(original.Length)],
                    2 => RandomFile(random),
                    _ => Mutate(original, random, flips: 1)[..Math.Max(0, original.Length - random.Next(3))],
                };
                File.WriteAllBytes(path, bytes);
                try { SafetensorsFile.Open(path).Dispose(); }
                catch (SafetensorsException e) when (e.File == path && !e.Message.Contains('\n')) { }
            }
        });
        // A generous bound that only a hang exceeds; speed is not under test here.
        await work.WaitAsync(TimeSpan.FromMinutes(2));
    }

    private static byte[] Mutate(byte[] original, Random random, int flips)
    {
        var bytes = (byte[])original.Clone();
        for (int i = 0; i < flips; i++)
        {
            // Mostly hit the header, where the rules are.
            int at = random.Next(Math.Min(bytes.Length, 200));
            bytes[at] = random.Next(3) == 0 ? (byte)random.Next(256) : (byte)"{}[]\":,0123456789-.e\\u"[random.Next(22)];
        }
        return bytes;
    }

    private static byte[] RandomFile(Random random)
    {
        var body = new byte[random.Next(64)];
        random.NextBytes(body);
        var prefix = BitConverter.GetBytes((ulong)random.Next(0, 80));
        return [.. prefix, .. Encoding.UTF8.GetBytes("{\"a\":{\"dtype\":\"U8\",\"shape\":["), .. body];
    }
}
