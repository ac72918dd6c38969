using System.Buffers.Binary;
using System.Text.Json;

namespace MergeCluster.Merge.Tests.Support;

/// <summary>One tensor entry as the header JSON states it.</summary>
public sealed record RawTensor(string Key, string DType, long[] Shape, long Begin, long End)
{
    public long Elements => Shape.Aggregate(1L, (a, d) => a * d);
    public long ByteLength => End - Begin;
}

/// <summary>
/// A safetensors file read with nothing but System.Text.Json and a FileStream, independent of the library under test,
/// so tests can check the library and the CLI against it.
/// </summary>
public sealed class RawSafetensors
{
    private RawSafetensors(string path, long dataStart, List<RawTensor> tensors, Dictionary<string, string> metadata)
    {
        Path = path;
        DataStart = dataStart;
        Tensors = tensors;
        Metadata = metadata;
    }

    public string Path { get; }
    public long DataStart { get; }
    /// <summary>Tensors in the order the header JSON lists them.</summary>
    public IReadOnlyList<RawTensor> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public RawTensor this[string key] => Tensors.Single(t => t.Key == key);

    public static RawSafetensors Read(string path)
    {
        using var stream = File.OpenRead(path);
        var prefix = new byte[8];
        stream.ReadExactly(prefix);
        long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        var json = new byte[n];
        stream.ReadExactly(json);
        using var doc = JsonDocument.Parse(json);
        var tensors = new List<RawTensor>();
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var p in doc.RootElement.EnumerateObject())
        {
            if (p.Name == "__metadata__")
            {
                foreach (var m in p.Value.EnumerateObject()) metadata[m.Name] = m.Value.GetString()!;
                continue;
            }
            var offsets = p.Value.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt64()).ToArray();
            tensors.Add(new RawTensor(p.Name, p.Value.GetProperty("dtype").GetString()!,
                p.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray(), offsets[0], offsets[1]));
        }
        return new RawSafetensors(path, 8 + n, tensors, metadata);
    }

    /// <summary>A tensor's bytes, read from the file.</summary>
    public byte[] Bytes(RawTensor t)
    {
        using var stream = File.OpenRead(Path);
        stream.Position = DataStart + t.Begin;
        var bytes = new byte[t.ByteLength];
        stream.ReadExactly(bytes);
        return bytes;
    }
}
