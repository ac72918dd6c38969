using System.Buffers.Binary;
using System.Collections.Immutable;
using System.Text;

namespace MergeCluster.Safetensors.Tests;

/// <summary>A directory of real files for one test, removed afterwards.</summary>
public sealed class ScratchDirectory : IDisposable
{
    public ScratchDirectory(string? parent = null)
    {
        Path = System.IO.Path.Combine(parent ?? System.IO.Path.GetTempPath(), "mergecluster-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

/// <summary>Builds safetensors files: valid ones through the writer, malformed ones byte by byte.</summary>
public static class SafetensorsFiles
{
    public static TensorSpec Spec(string key, DType type, params long[] shape) => new(key, type, shape.ToImmutableArray());

    /// <summary>Writes tensors in the order given, each filled with bytes from <paramref name="fill"/>, and returns their bytes by key.</summary>
    public static Dictionary<string, byte[]> Write(string path, IReadOnlyList<TensorSpec> specs, IReadOnlyDictionary<string, string>? metadata = null, Func<TensorSpec, byte[]>? fill = null)
    {
        var layout = SafetensorsLayout.Create(specs, metadata);
        var data = new Dictionary<string, byte[]>();
        using var writer = SafetensorsWriter.Create(path, layout);
        foreach (var spec in specs)
        {
            var bytes = fill?.Invoke(spec) ?? RandomBytes(spec.Key, checked((int)spec.ByteLength));
            writer.Write(layout[spec.Key], 0, bytes);
            data[spec.Key] = bytes;
        }
        writer.Commit();
        return data;
    }

    /// <summary>Bytes that depend only on the seed text, so two files can hold equal tensors.</summary>
    public static byte[] RandomBytes(string seed, int count)
    {
        var bytes = new byte[count];
        new Random(StableHash(seed)).NextBytes(bytes);
        return bytes;
    }

    private static int StableHash(string s)
    {
        int h = 17;
        foreach (char c in s) h = h * 31 + c;
        return h;
    }

    /// <summary>A file from raw parts: an 8-byte length (the JSON's own unless given), the JSON bytes, then <paramref name="dataBytes"/> bytes.</summary>
    public static string Raw(string path, byte[] json, long dataBytes, ulong? headerLength = null)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write);
        Span<byte> prefix = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, headerLength ?? (ulong)json.Length);
        stream.Write(prefix);
        stream.Write(json);
        stream.Write(new byte[dataBytes]);
        return path;
    }

    public static string Raw(string path, string json, long dataBytes, ulong? headerLength = null) =>
        Raw(path, Encoding.UTF8.GetBytes(json), dataBytes, headerLength);

    /// <summary>Bytes at an offset read with a plain FileStream, independent of the reader under test; fewer where the file ends.</summary>
    public static byte[] ReadWithFileStream(string path, long offset, int count)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read);
        stream.Seek(offset, SeekOrigin.Begin);
        var bytes = new byte[Math.Max(0, Math.Min(count, stream.Length - offset))];
        stream.ReadExactly(bytes);
        return bytes;
    }
}
