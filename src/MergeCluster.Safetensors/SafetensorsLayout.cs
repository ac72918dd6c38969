using System.Buffers;
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
    private Dictionary<string, int>? _index;

    private SafetensorsLayout(byte[] headerBytes, IReadOnlyList<TensorInfo> tensors)
    {
        HeaderBytes = headerBytes;
        Tensors = tensors;
        DataStart = headerBytes.Length;
        TotalLength = DataStart + (tensors.Count == 0 ? 0 : tensors[^1].End);
    }

    /// <summary>The 8-byte length prefix and the space-padded JSON, together a multiple of 8 bytes.</summary>
    public byte[] HeaderBytes { get; }
    /// <summary>Tensors in data order, with offsets relative to the data section.</summary>
    public IReadOnlyList<TensorInfo> Tensors { get; }
    public long DataStart { get; }
    public long TotalLength { get; }

    public TensorInfo this[string key] => Tensors[Index[key]];
    public bool TryGet(string key, out TensorInfo info)
    {
        if (Index.TryGetValue(key, out int i)) { info = Tensors[i]; return true; }
        info = null!;
        return false;
    }

    /// <summary>Lookup by key, built on first use: a merge's plan addresses tensors by position, never by key.</summary>
    private Dictionary<string, int> Index
    {
        get
        {
            if (_index is { } index) return index;
            index = new Dictionary<string, int>(Tensors.Count, StringComparer.Ordinal);
            for (int i = 0; i < Tensors.Count; i++) index[Tensors[i].Key] = i;
            return _index = index;
        }
    }

    /// <summary>Absolute offset in the file of a tensor's first byte.</summary>
    public long FileOffset(TensorInfo t) => DataStart + t.Begin;

    /// <summary>Lays tensors out in the order given, contiguously, with the metadata first in the JSON.</summary>
    public static SafetensorsLayout Create(IReadOnlyList<TensorSpec> specs, IReadOnlyDictionary<string, string>? metadata)
    {
        var tensors = new TensorInfo[specs.Count];
        long offset = 0;
        for (int i = 0; i < specs.Count; i++)
        {
            var s = specs[i];
            long end = checked(offset + s.ByteLength);
            tensors[i] = new TensorInfo(s.Key, s.DType, s.Shape, offset, end);
            offset = end;
        }
        return FromTensors(tensors, metadata);
    }

    /// <summary>
    /// The layout of tensors already placed (contiguous from offset 0, in this order), used as they are: a plan of a
    /// million tensors gets its header without a second copy of every tensor's entry.
    /// </summary>
    public static SafetensorsLayout FromTensors(IReadOnlyList<TensorInfo> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        var keys = new HashSet<string>(tensors.Count, StringComparer.Ordinal);
        long expected = 0, estimate = 64;
        foreach (var t in tensors)
        {
            if (t.Key == "__metadata__" || !keys.Add(t.Key))
                throw new ArgumentException($"duplicate or reserved tensor key '{t.Key}'");
            if (t.Begin != expected || t.End < t.Begin) throw new ArgumentException($"tensor '{t.Key}' is not placed right after the previous one");
            expected = t.End;
            // Enough for the entry unless the key needs escaping, in which case the buffer grows.
            estimate += 3L * t.Key.Length + 64 + 21L * t.Shape.Length;
        }
        if (metadata is not null)
            foreach (var (k, v) in metadata) estimate += 3L * (k.Length + v.Length) + 8;

        var json = new ArrayBufferWriter<byte>((int)Math.Min(estimate, Array.MaxLength));
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
        int jsonLength = json.WrittenCount;
        int padded = (jsonLength + 7) & ~7;
        var header = new byte[8 + padded];
        BinaryPrimitives.WriteUInt64LittleEndian(header, (ulong)padded);
        json.WrittenSpan.CopyTo(header.AsSpan(8));
        header.AsSpan(8 + jsonLength).Fill((byte)' ');
        return new SafetensorsLayout(header, tensors);
    }
}
