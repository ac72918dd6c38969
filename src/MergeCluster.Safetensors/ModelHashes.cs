using System.Security.Cryptography;
using System.Text;

namespace MergeCluster.Safetensors;

/// <summary>The hashes the A1111 web UI shows for a checkpoint, and a content hash over a set of tensors.</summary>
public static class ModelHashes
{
    /// <summary>AutoV2: sha256 of the whole file, first 10 hex digits.</summary>
    public static string AutoV2(string path, CancellationToken ct = default, Action<long>? progress = null) => FullSha256(path, ct, progress)[..AutoV2Length];

    /// <summary>AutoV2 of a file whose sha256 is <paramref name="sha256"/>.</summary>
    public static string AutoV2(byte[] sha256) => Convert.ToHexStringLower(sha256)[..AutoV2Length];

    /// <summary>Hex digits in an AutoV2 hash, whatever the file.</summary>
    public const int AutoV2Length = 10;

    /// <summary>
    /// sha256 of the whole file, 64 lower-case hex digits. Reads 1 MiB at a time, checking <paramref name="ct"/> and
    /// reporting the bytes read to <paramref name="progress"/> after each, so hashing a 7 GB checkpoint can be interrupted.
    /// </summary>
    public static string FullSha256(string path, CancellationToken ct = default, Action<long>? progress = null)
    {
        using var handle = RegularFile.OpenRead(path);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        long offset = 0;
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            int n = RandomAccess.Read(handle, buffer, offset);
            if (n <= 0) break;
            hash.AppendData(buffer, 0, n);
            offset += n;
            progress?.Invoke(n);
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>A1111's legacy hash: sha256 of the 64 KiB at offset 1 MiB (fewer bytes if the file is shorter), first 8 hex digits.</summary>
    public static string Legacy(string path)
    {
        using var handle = RegularFile.OpenRead(path);
        long length = RandomAccess.GetLength(handle);
        var buffer = new byte[0x10000];
        int total = 0;
        while (total < buffer.Length && 0x100000 + total < length)
        {
            int n = RandomAccess.Read(handle, buffer.AsSpan(total), 0x100000 + total);
            if (n <= 0) break;
            total += n;
        }
        return Convert.ToHexStringLower(SHA256.HashData(buffer.AsSpan(0, total)))[..8];
    }

    /// <summary>
    /// sha256 over the given tensors in ordinal key order: for each, its key, dtype name and shape as one
    /// UTF-8 line, then its bytes. Equal for two files exactly when those tensors are identical.
    /// </summary>
    public static string Content(SafetensorsFile file, IEnumerable<string> keys, CancellationToken ct = default)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (string key in keys.Order(StringComparer.Ordinal))
        {
            var t = file.Get(key);
            hash.AppendData(Encoding.UTF8.GetBytes($"{t.Key}\t{t.DType.Name()}\t{string.Join(",", t.Shape)}\n"));
            const int window = 16 << 20;
            for (long off = 0; off < t.ByteLength; off += window)
            {
                ct.ThrowIfCancellationRequested();
                hash.AppendData(file.Bytes(t, off, (int)Math.Min(window, t.ByteLength - off)));
            }
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }
}
