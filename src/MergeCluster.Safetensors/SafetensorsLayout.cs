using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace MergeCluster.Safetensors;

/// <summary>
/// The byte layout of a file to be written: header bytes and every tensor's absolute range.
/// Deterministic in its inputs, so a coordinator and many silos compute the same offsets independently.
/// </summary>
public sealed class SafetensorsLayout
{
    private readonly Dictionary<string, int> _index;

    private SafetensorsLayout(byte[] headerBytes, IReadOnlyList<TensorInfo> tensors)
    {
        HeaderBytes = headerBytes;
        Tensors = tensors;
        _index = new Dictionary<string, int>(tensors.Count, StringComparer.Ordinal);
        for (int i = 0; i < tensors.Count; i++) _index[tensors[i].Key] = i;
        DataStart = headerBytes.Length;
        TotalLength = DataStart + (tensors.Count == 0 ? 0 : tensors[^1].End);
    }

    /// <summary>The 8-byte length prefix and the space-padded JSON, together a multiple of 8 bytes.</summary>
    public byte[] HeaderBytes { get; }
    /// <summary>Tensors in data order, with offsets relative to the data section.</summary>
    public IReadOnlyList<TensorInfo> Tensors { get; }
    public long DataStart { get; }
    public long TotalLength { get; }

    public TensorInfo this[string key] => Tensors[_index[key]];
    public bool TryGet(string key, out TensorInfo info)
    {
        if (_index.TryGetValue(key, out int i)) { info = Tensors[i]; return true; }
        info = null!;
        return false;
    }

    /// <summary>Absolute offset in the file of a tensor's first byte.</summary>
    public long FileOffset(TensorInfo t) => DataStart + t.Begin;

    /// <summary>Lays tensors out in the order given, contiguously, with the metadata first in the JSON.</summary>
    public static SafetensorsLayout Create(IReadOnlyList<TensorSpec> specs, IReadOnlyDictionary<string, string>? metadata)
    {
        var tensors = new List<TensorInfo>(specs.Count);
        var keys = new HashSet<string>(StringComparer.Ordinal);
        long offset = 0;
        foreach (var s in specs)
        {
            if (s.Key == "__metadata__" || !keys.Add(s.Key))
                throw new ArgumentException($"duplicate or reserved tensor key '{s.Key}'");
            long end = checked(offset + s.ByteLength);
            tensors.Add(new TensorInfo(s.Key, s.DType, s.Shape, offset, end));
            offset = end;
        }

        using var json = new MemoryStream();
        using (var w = new Utf8JsonWriter(json, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var kv in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                    w.WriteString(kv.Key, kv.Value);
                w.WriteEndObject();
            }
            foreach (var t in tensors)
            {
                w.WriteStartObject(t.Key);
                w.WriteString("dtype", t.DType.Name());
                w.WriteStartArray("shape");
                foreach (long d in t.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(t.Begin);
                w.WriteNumberValue(t.End);
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        int jsonLength = (int)json.Length;
        int padded = (jsonLength + 7) & ~7;
        var header = new byte[8 + padded];
        BinaryPrimitives.WriteUInt64LittleEndian(header, (ulong)padded);
        json.GetBuffer().AsSpan(0, jsonLength).CopyTo(header.AsSpan(8));
        header.AsSpan(8 + jsonLength).Fill((byte)' ');
        return new SafetensorsLayout(header, tensors);
    }
}
