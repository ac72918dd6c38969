using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Support;

/// <summary>Small surgical edits of checkpoint files, to plant extra keys or bad values in otherwise realistic files.</summary>
public static class CheckpointEdits
{
    /// <summary>Copies <paramref name="source"/> to <paramref name="target"/> with one more tensor appended.</summary>
    public static void CopyWithExtraTensor(string source, string target, string key, string dtype, long[] shape, byte[] bytes)
    {
        using var file = SafetensorsFile.Open(source);
        if (!DTypes.TryParse(dtype, out var type)) throw new ArgumentException($"unknown dtype {dtype}");
        var specs = file.Tensors.Select(t => new TensorSpec(t.Key, t.DType, t.Shape))
            .Append(new TensorSpec(key, type, [.. shape])).ToArray();
        using var writer = SafetensorsWriter.Create(target, SafetensorsLayout.Create(specs, file.Header.Metadata));
        foreach (var t in file.Tensors) writer.Write(writer.Layout[t.Key], 0, file.Bytes(t));
        writer.Write(writer.Layout[key], 0, bytes);
        writer.Commit();
    }

    /// <summary>Copies <paramref name="source"/> to <paramref name="target"/> with its metadata changed by <paramref name="edit"/> (tensors as they are).</summary>
    public static void CopyWithMetadata(string source, string target, Action<Dictionary<string, string>> edit)
    {
        using var file = SafetensorsFile.Open(source);
        var metadata = new Dictionary<string, string>(file.Header.Metadata, StringComparer.Ordinal);
        edit(metadata);
        var specs = file.Tensors.Select(t => new TensorSpec(t.Key, t.DType, t.Shape)).ToArray();
        using var writer = SafetensorsWriter.Create(target, SafetensorsLayout.Create(specs, metadata));
        foreach (var t in file.Tensors) writer.Write(writer.Layout[t.Key], 0, file.Bytes(t));
        writer.Commit();
    }

    /// <summary>Writes a file of zero-filled tensors with the given keys, dtypes and shapes.</summary>
    public static void CreateZeroed(string path, IEnumerable<(string Key, DType DType, long[] Shape)> tensors)
    {
        var specs = tensors.Select(t => new TensorSpec(t.Key, t.DType, [.. t.Shape])).ToArray();
        using var writer = SafetensorsWriter.Create(path, SafetensorsLayout.Create(specs, null));
        writer.Commit();
    }

    /// <summary>Overwrites bytes of one tensor in place, at a byte offset within it.</summary>
    public static void Patch(string path, string key, long offsetInTensor, byte[] bytes)
    {
        var raw = RawSafetensors.Read(path);
        var t = raw[key];
        if (offsetInTensor + bytes.Length > t.ByteLength) throw new ArgumentOutOfRangeException(nameof(offsetInTensor));
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Write);
        stream.Position = raw.DataStart + t.Begin + offsetInTensor;
        stream.Write(bytes);
    }
}
