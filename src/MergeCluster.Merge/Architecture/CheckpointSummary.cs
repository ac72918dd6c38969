using System.Numerics;
using System.Runtime.InteropServices;
using MergeCluster.Safetensors;
using ComponentNames = MergeCluster.Merge.Architecture.Components;

namespace MergeCluster.Merge.Architecture;

/// <summary>One component of a checkpoint: its keys, size, dtypes, missing keys, content hash and, when scanned, non-finite values.</summary>
public sealed record ComponentSummary(
    Component Component,
    IReadOnlyList<string> Keys,
    long Parameters,
    long Bytes,
    IReadOnlyDictionary<DType, int> DTypes,
    int MissingKeys,
    string? ContentHash,
    long? NonFinite);

/// <summary>
/// What `inspect` reports about a file: architecture, components, missing and unknown keys, the A1111 hashes and,
/// on request, a scan for non-finite values. The expensive passes (whole-file sha256, one content hash per
/// component, the scan) run in parallel.
/// </summary>
public sealed class CheckpointSummary
{
    private const int ScanWindow = 1 << 20;

    private CheckpointSummary(SafetensorsFile file, ArchitectureDetection detection, IReadOnlyList<ComponentSummary> components,
        string? sha256, string? legacyHash, IReadOnlyDictionary<string, long>? nonFiniteByKey)
    {
        Path = file.Path;
        Length = file.Length;
        Tensors = file.Tensors.Count;
        Metadata = file.Header.Metadata;
        Detection = detection;
        Components = components;
        Sha256 = sha256;
        LegacyHash = legacyHash;
        NonFiniteByKey = nonFiniteByKey;
        foreach (var c in components) Parameters += c.Parameters;
    }

    public string Path { get; }
    public long Length { get; }
    public int Tensors { get; }
    /// <summary>Elements of every tensor, integer buffers included.</summary>
    public long Parameters { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    public ArchitectureDetection Detection { get; }
    public ModelArchitecture Architecture => Detection.Architecture;
    /// <summary>Components that hold keys in the file or that the architecture expects, in <see cref="ComponentNames.All"/> order.</summary>
    public IReadOnlyList<ComponentSummary> Components { get; }
    /// <summary>sha256 of the whole file (64 hex digits); null when hashes were not asked for.</summary>
    public string? Sha256 { get; }
    /// <summary>The A1111 AutoV2 hash: the first 10 hex digits of <see cref="Sha256"/>.</summary>
    public string? AutoV2 => Sha256?[..10];
    /// <summary>The A1111 legacy hash (8 hex digits).</summary>
    public string? LegacyHash { get; }
    /// <summary>Keys holding NaN or infinite values, with their counts; null without a scan.</summary>
    public IReadOnlyDictionary<string, long>? NonFiniteByKey { get; }
    public long? NonFinite => NonFiniteByKey?.Values.Sum();

    /// <summary>Summarises an open file; <paramref name="hashes"/> adds the file and content hashes, <paramref name="scan"/> counts non-finite values.</summary>
    public static CheckpointSummary Create(SafetensorsFile file, bool hashes = true, bool scan = false, CancellationToken cancellation = default)
    {
        var detection = ModelArchitecture.Detect(file.Header);
        var architecture = detection.Architecture;
        var byComponent = new Dictionary<Component, List<TensorInfo>>();
        foreach (var t in file.Tensors)
        {
            var c = architecture.ComponentOf(t.Key);
            if (!byComponent.TryGetValue(c, out var list)) byComponent[c] = list = [];
            list.Add(t);
        }
        var missing = new Dictionary<Component, int>();
        foreach (string key in detection.MissingKeys)
            missing[architecture.ComponentOf(key)] = missing.GetValueOrDefault(architecture.ComponentOf(key)) + 1;

        var shown = ComponentNames.All
            .Where(c => byComponent.ContainsKey(c) || missing.ContainsKey(c))
            .ToArray();
        var contentHashes = new string?[shown.Length];
        string? sha256 = null, legacy = null;
        var nonFinite = scan ? new Dictionary<string, long>(StringComparer.Ordinal) : null;

        var work = new List<Action>();
        if (hashes)
        {
            work.Add(() => sha256 = ModelHashes.FullSha256(file.Path, cancellation));
            work.Add(() => legacy = ModelHashes.Legacy(file.Path));
            for (int i = 0; i < shown.Length; i++)
            {
                int index = i;
                if (byComponent.TryGetValue(shown[i], out var tensors))
                    work.Add(() => contentHashes[index] = ModelHashes.Content(file, tensors.Select(t => t.Key), cancellation));
            }
        }
        if (nonFinite is not null)
            work.Add(() => ScanNonFinite(file, nonFinite, cancellation));
        Parallel.Invoke(new ParallelOptions { CancellationToken = cancellation }, work.ToArray());

        var components = new ComponentSummary[shown.Length];
        for (int i = 0; i < shown.Length; i++)
        {
            var tensors = byComponent.GetValueOrDefault(shown[i]) ?? [];
            var dtypes = new SortedDictionary<DType, int>();
            long parameters = 0, bytes = 0, bad = 0;
            foreach (var t in tensors)
            {
                dtypes[t.DType] = dtypes.GetValueOrDefault(t.DType) + 1;
                parameters += t.ElementCount;
                bytes += t.ByteLength;
                bad += nonFinite?.GetValueOrDefault(t.Key) ?? 0;
            }
            components[i] = new ComponentSummary(shown[i], tensors.Select(t => t.Key).ToArray(), parameters, bytes, dtypes,
                missing.GetValueOrDefault(shown[i]), contentHashes[i], nonFinite is null ? null : bad);
        }
        return new CheckpointSummary(file, detection, components, sha256, legacy, nonFinite);
    }

    /// <summary>Counts NaN and ±Inf in every floating-point tensor from their bits, tensors in parallel, windows of bounded size.</summary>
    private static void ScanNonFinite(SafetensorsFile file, Dictionary<string, long> result, CancellationToken cancellation)
    {
        var floats = file.Tensors.Where(t => t.DType.IsFloat() && t.ElementCount > 0).ToArray();
        var counts = new long[floats.Length];
        Parallel.For(0, floats.Length, new ParallelOptions { CancellationToken = cancellation }, i =>
        {
            var t = floats[i];
            long window = (long)ScanWindow * t.DType.Size(), count = 0;
            for (long first = 0; first < t.ByteLength; first += window)
                count += DTypeConvert.CountNonFinite(t.DType, file.Bytes(t, first, (int)Math.Min(window, t.ByteLength - first)));
            counts[i] = count;
        });
        for (int i = 0; i < floats.Length; i++)
            if (counts[i] > 0) result[floats[i].Key] = counts[i];
    }
}
