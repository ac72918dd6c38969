using System.Diagnostics;
using System.Security.Cryptography;
using static MergeCluster.Safetensors.Tests.SafetensorsFiles;

namespace MergeCluster.Safetensors.Tests;

public class ModelHashesTests : IDisposable
{
    private readonly ScratchDirectory _dir = new();
    public void Dispose() => _dir.Dispose();

    private static string Sha256Hex(byte[] bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));

    /// <summary>Output of a shell pipeline, or null where the tools are missing.</summary>
    private static string? Shell(string command)
    {
        if (!File.Exists("/bin/sh")) return null;
        var start = new ProcessStartInfo("/bin/sh", ["-c", command]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var process = Process.Start(start)!;
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return process.ExitCode == 0 ? output.Split(' ')[0].Trim() : null;
    }

    [Theory]
    [InlineData(3_000_000)]   // the legacy window lies inside the file
    [InlineData(1_070_000)]   // the file ends inside the window
    [InlineData(500_000)]     // the file ends before the window
    public void AutoV2_and_legacy_hash_match_an_independent_sha256(int tensorBytes)
    {
        string path = _dir.File("hash.safetensors");
        Write(path, [Spec("w", DType.U8, tensorBytes)], new Dictionary<string, string> { ["k"] = "v" });
        long length = new FileInfo(path).Length;

        string full = Sha256Hex(ReadWithFileStream(path, 0, (int)length));
        string window = Sha256Hex(ReadWithFileStream(path, 0x100000, 0x10000));
        Assert.Equal(full[..10], ModelHashes.AutoV2(path));
        Assert.Equal(full, ModelHashes.FullSha256(path));
        Assert.Equal(window[..8], ModelHashes.Legacy(path));
        if (length <= 0x100000) Assert.Equal("e3b0c442", ModelHashes.Legacy(path)); // sha256 of nothing

        // The same, from coreutils, as a user would check it.
        if (Shell($"sha256sum '{path}'") is { } sum) Assert.Equal(full, sum);
        if (Shell($"dd if='{path}' bs=65536 skip=16 count=1 status=none | sha256sum") is { } dd) Assert.Equal(window, dd);
    }

    [Fact]
    public void Content_hash_ignores_tensor_order_and_sees_a_one_byte_change()
    {
        var specs = new[] { Spec("a", DType.F16, 100), Spec("b", DType.F32, 7, 3), Spec("c", DType.I64), Spec("d", DType.BF16, 0) };
        string first = _dir.File("first.safetensors"), reordered = _dir.File("reordered.safetensors"), changed = _dir.File("changed.safetensors");
        Write(first, specs);
        Write(reordered, [specs[2], specs[3], specs[1], specs[0]], new Dictionary<string, string> { ["note"] = "metadata is not content" });
        Write(changed, specs, fill: s =>
        {
            var bytes = RandomBytes(s.Key, (int)s.ByteLength);
            if (s.Key == "b") bytes[41] ^= 1;
            return bytes;
        });
        Assert.NotEqual(File.ReadAllBytes(first), File.ReadAllBytes(reordered));

        string[] keys = ["a", "b", "c", "d"];
        using var f1 = SafetensorsFile.Open(first);
        using var f2 = SafetensorsFile.Open(reordered);
        using var f3 = SafetensorsFile.Open(changed);
        Assert.Equal(ModelHashes.Content(f1, keys), ModelHashes.Content(f2, keys.Reverse()));
        Assert.NotEqual(ModelHashes.Content(f1, keys), ModelHashes.Content(f3, keys));
        // A component that leaves out the changed tensor hashes equal.
        Assert.Equal(ModelHashes.Content(f1, ["a", "c"]), ModelHashes.Content(f3, ["c", "a"]));
        Assert.Matches("^[0-9a-f]{64}$", ModelHashes.Content(f1, keys));
    }

    [Fact]
    public void Content_hash_sees_dtype_and_shape_not_only_bytes()
    {
        string asF16 = _dir.File("f16.safetensors"), asBF16 = _dir.File("bf16.safetensors"), reshaped = _dir.File("reshaped.safetensors");
        Write(asF16, [Spec("w", DType.F16, 4, 6)]);
        Write(asBF16, [Spec("w", DType.BF16, 4, 6)]);
        Write(reshaped, [Spec("w", DType.F16, 6, 4)]);
        using var a = SafetensorsFile.Open(asF16);
        using var b = SafetensorsFile.Open(asBF16);
        using var c = SafetensorsFile.Open(reshaped);
        Assert.Equal(a.Bytes(a.Get("w")).ToArray(), b.Bytes(b.Get("w")).ToArray());
        Assert.NotEqual(ModelHashes.Content(a, ["w"]), ModelHashes.Content(b, ["w"]));
        Assert.NotEqual(ModelHashes.Content(a, ["w"]), ModelHashes.Content(c, ["w"]));
    }
}
