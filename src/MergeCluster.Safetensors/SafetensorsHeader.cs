using System.Buffers.Binary;
using System.Collections.Immutable;
using System.Text;
using System.Text.Json;

namespace MergeCluster.Safetensors;

/// <summary>A validated safetensors header: tensors in data order, metadata, and where the data starts.</summary>
public sealed class SafetensorsHeader
{
    /// <summary>The reference implementation refuses headers above this size.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private readonly Dictionary<string, TensorInfo> _byKey;

    private SafetensorsHeader(ImmutableArray<TensorInfo> tensors, ImmutableSortedDictionary<string, string> metadata, long headerLength)
    {
        Tensors = tensors;
        Metadata = metadata;
        HeaderLength = headerLength;
        _byKey = new Dictionary<string, TensorInfo>(tensors.Length, StringComparer.Ordinal);
        foreach (var t in tensors) _byKey[t.Key] = t;
    }

    /// <summary>Tensors ordered by their byte offset in the data section.</summary>
    public ImmutableArray<TensorInfo> Tensors { get; }
    public ImmutableSortedDictionary<string, string> Metadata { get; }
    /// <summary>The JSON length N from the first 8 bytes.</summary>
    public long HeaderLength { get; }
    /// <summary>Absolute file offset of the data section: 8 + N.</summary>
    public long DataStart => 8 + HeaderLength;
    public long DataLength => Tensors.IsEmpty ? 0 : Tensors[^1].End;

    public bool TryGet(string key, out TensorInfo info) => _byKey.TryGetValue(key, out info!);
    public bool Contains(string key) => _byKey.ContainsKey(key);
    public IEnumerable<string> Keys => _byKey.Keys;

    /// <summary>Checks the 8-byte length prefix against the file size before any header byte is allocated.</summary>
    public static long ReadHeaderLength(ReadOnlySpan<byte> prefix, long fileLength, string file)
    {
        if (fileLength < 8 || prefix.Length < 8)
            throw new SafetensorsException(SafetensorsError.FileTooSmall, file, null, $"file is {fileLength} bytes, shorter than the 8-byte header length");
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (n > MaxHeaderBytes)
            throw new SafetensorsException(SafetensorsError.HeaderTooLarge, file, null, $"header length {n} exceeds the {MaxHeaderBytes}-byte limit");
        if ((long)n > fileLength - 8)
            throw new SafetensorsException(SafetensorsError.InvalidHeaderLength, file, null, $"header length {n} runs past the end of the {fileLength}-byte file");
        return (long)n;
    }

    /// <summary>Parses and validates header JSON; <paramref name="dataLength"/> is the file size minus 8 + N.</summary>
    public static SafetensorsHeader Parse(ReadOnlySpan<byte> json, long dataLength, string file)
    {
        try { _ = new UTF8Encoding(false, true).GetCharCount(json); }
        catch (DecoderFallbackException)
        {
            throw new SafetensorsException(SafetensorsError.InvalidHeaderUtf8, file, null, "header is not valid UTF-8");
        }
        if (json.Length == 0 || json[0] != (byte)'{')
            throw new SafetensorsException(SafetensorsError.InvalidHeaderStart, file, null, "header does not start with '{'");

        var entries = new List<TensorInfo>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var metadata = ImmutableSortedDictionary.CreateBuilder<string, string>(StringComparer.Ordinal);
        var reader = new Utf8JsonReader(json, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Disallow, MaxDepth = 8 });
        var integers = new List<long>(8); // one scratch list for every shape and offset pair: a million tensors, not a million lists
        string? key = null; // the entry being read, so a JSON error inside it names it
        try
        {
            Expect(ref reader, JsonTokenType.StartObject, file, null);
            while (true)
            {
                Read(ref reader, file, null);
                if (reader.TokenType == JsonTokenType.EndObject) break;
                key = reader.GetString()!;
                if (!seen.Add(key))
                    throw new SafetensorsException(SafetensorsError.DuplicateKey, file, key, "key appears twice in the header");
                if (key == "__metadata__")
                    ReadMetadata(ref reader, metadata, file);
                else
                    entries.Add(ReadTensor(ref reader, key, file, integers));
                key = null;
            }
            // Trailing whitespace pads the header to 8 bytes; anything else after the object is an error.
            if (reader.Read())
                throw new SafetensorsException(SafetensorsError.InvalidHeaderJson, file, null, "unexpected content after the header object");
        }
        catch (JsonException e)
        {
            throw new SafetensorsException(SafetensorsError.InvalidHeaderJson, file, key == "__metadata__" ? null : key, $"header is not valid JSON ({FirstLine(e.Message)})");
        }

        // Empty tensors share an offset with their neighbour; the key breaks the tie so the order is deterministic.
        entries.Sort(static (a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin)
            : a.End != b.End ? a.End.CompareTo(b.End) : string.CompareOrdinal(a.Key, b.Key));
        long expected = 0;
        foreach (var t in entries)
        {
            if (t.Begin != expected)
                throw new SafetensorsException(SafetensorsError.NonContiguous, file, t.Key,
                    t.Begin > expected ? $"data starts at {t.Begin}, leaving a gap after offset {expected}" : $"data at {t.Begin} overlaps the previous tensor ending at {expected}");
            expected = t.End;
        }
        if (expected != dataLength)
            throw new SafetensorsException(expected < dataLength ? SafetensorsError.TrailingBytes : SafetensorsError.MissingData, file, null,
                expected < dataLength ? $"file has {dataLength - expected} bytes after the last tensor's data" : $"tensor data needs {expected} bytes but the file holds {dataLength}");

        return new SafetensorsHeader(entries.ToImmutableArray(), metadata.ToImmutable(), json.Length);
    }

    private static void ReadMetadata(ref Utf8JsonReader reader, ImmutableSortedDictionary<string, string>.Builder metadata, string file)
    {
        Read(ref reader, file, null);
        if (reader.TokenType == JsonTokenType.Null) return;
        if (reader.TokenType != JsonTokenType.StartObject)
            throw new SafetensorsException(SafetensorsError.InvalidMetadata, file, null, "__metadata__ is not an object of strings");
        while (true)
        {
            Read(ref reader, file, null);
            if (reader.TokenType == JsonTokenType.EndObject) return;
            string name = reader.GetString()!;
            Read(ref reader, file, null);
            if (reader.TokenType != JsonTokenType.String)
                throw new SafetensorsException(SafetensorsError.InvalidMetadata, file, null, $"__metadata__ value '{name}' is not a string");
            metadata[name] = reader.GetString()!;
        }
    }

    private static TensorInfo ReadTensor(ref Utf8JsonReader reader, string key, string file, List<long> integers)
    {
        Expect(ref reader, JsonTokenType.StartObject, file, key);
        DType? dtype = null;
        ImmutableArray<long>? shape = null;
        (long Begin, long End)? offsets = null;
        while (true)
        {
            Read(ref reader, file, key);
            if (reader.TokenType == JsonTokenType.EndObject) break;
            string field = reader.GetString()!;
            switch (field)
            {
                case "dtype":
                    Expect(ref reader, JsonTokenType.String, file, key);
                    string name = reader.GetString()!;
                    if (!DTypes.TryParse(name, out var dt))
                        throw new SafetensorsException(SafetensorsError.UnknownDType, file, key, $"unknown dtype '{name}'");
                    dtype = dt;
                    break;
                case "shape":
                    ReadIntegers(ref reader, file, key, "shape", SafetensorsError.InvalidShape, integers);
                    shape = ImmutableArray.Create(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(integers));
                    break;
                case "data_offsets":
                    ReadIntegers(ref reader, file, key, "data_offsets", SafetensorsError.InvalidOffsets, integers);
                    if (integers.Count != 2)
                        throw new SafetensorsException(SafetensorsError.InvalidOffsets, file, key, "data_offsets must hold exactly two integers");
                    offsets = (integers[0], integers[1]);
                    break;
                default:
                    reader.Skip();
                    break;
            }
        }
        if (dtype is null || shape is null || offsets is null)
            throw new SafetensorsException(SafetensorsError.InvalidHeaderJson, file, key, "entry lacks dtype, shape or data_offsets");
        var (begin, end) = offsets.Value;
        if (end < begin)
            throw new SafetensorsException(SafetensorsError.InvalidOffsets, file, key, $"data_offsets [{begin}, {end}] end before they begin");
        long? count = TensorInfo.CountElements(shape.Value.AsSpan());
        long bytes;
        try { bytes = count is null ? -1 : checked(count.Value * dtype.Value.Size()); }
        catch (OverflowException) { bytes = -1; }
        if (bytes < 0)
            throw new SafetensorsException(SafetensorsError.SizeOverflow, file, key, "shape size overflows 64 bits");
        if (bytes != end - begin)
            throw new SafetensorsException(SafetensorsError.SizeMismatch, file, key,
                $"shape [{string.Join(", ", shape.Value)}] of {dtype.Value.Name()} needs {bytes} bytes but data_offsets span {end - begin}");
        return new TensorInfo(key, dtype.Value, shape.Value, begin, end);
    }

    /// <summary>Reads an array of non-negative 64-bit integers into <paramref name="values"/> (cleared first).</summary>
    private static void ReadIntegers(ref Utf8JsonReader reader, string file, string key, string field, SafetensorsError error, List<long> values)
    {
        Read(ref reader, file, key);
        if (reader.TokenType != JsonTokenType.StartArray)
            throw new SafetensorsException(error, file, key, $"{field} is not an array");
        values.Clear();
        while (true)
        {
            Read(ref reader, file, key);
            if (reader.TokenType == JsonTokenType.EndArray) return;
            if (reader.TokenType != JsonTokenType.Number || !reader.TryGetUInt64(out ulong v) || v > long.MaxValue)
                throw new SafetensorsException(error, file, key, $"{field} holds a value that is not a non-negative 64-bit integer");
            if (values.Count >= 64)
                throw new SafetensorsException(error, file, key, $"{field} has more than 64 entries");
            values.Add((long)v);
        }
    }

    private static void Read(ref Utf8JsonReader reader, string file, string? key)
    {
        if (!reader.Read())
            throw new SafetensorsException(SafetensorsError.InvalidHeaderJson, file, key, "header JSON ends early");
    }

    private static void Expect(ref Utf8JsonReader reader, JsonTokenType type, string file, string? key)
    {
        Read(ref reader, file, key);
        if (reader.TokenType != type)
            throw new SafetensorsException(SafetensorsError.InvalidHeaderJson, file, key, $"expected {type} in header JSON, found {reader.TokenType}");
    }

    private static string FirstLine(string s)
    {
        int i = s.IndexOfAny(['\r', '\n']);
        return i < 0 ? s : s[..i];
    }
}
