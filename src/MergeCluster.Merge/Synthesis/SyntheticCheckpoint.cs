using System.Collections.Immutable;
using System.Diagnostics;
using System.Runtime.InteropServices;
using MergeCluster.Merge.Architecture;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Synthesis;

/// <summary>What to synthesise: the layout, the seed that makes it one "fine-tune" among many, its size and dtype.</summary>
public sealed record SynthesisOptions
{
    public required ModelArchitecture Architecture { get; init; }
    public ulong Seed { get; init; }
    /// <summary>Each dimension d becomes max(1, ceil(d × Scale)); 1 is the real size.</summary>
    public double Scale { get; init; } = 1.0;
    /// <summary>The dtype of every floating-point tensor; integer tensors keep their table dtype.</summary>
    public DType FloatType { get; init; } = DType.F16;
    /// <summary>Keys starting with any of these are left out, to make pruned files.</summary>
    public IReadOnlyList<string> DropPrefixes { get; init; } = [];
    public IReadOnlyDictionary<string, string>? Metadata { get; init; }
}

/// <summary>What a synthesis wrote.</summary>
public sealed record SynthesisResult(string Path, int Tensors, long Parameters, long Bytes, TimeSpan Elapsed);

/// <summary>
/// Writes checkpoints with the real key structure of an architecture and values that behave like fine-tunes of one
/// base model (see <see cref="SyntheticValues"/>), streamed in chunks from all cores with bounded memory.
/// </summary>
public static class SyntheticCheckpoint
{
    /// <summary>Elements generated per work item: small enough to bound memory per core, large enough to amortise a write.</summary>
    public const int ChunkElements = 1 << 20;

    /// <summary>Floating-point types synthesis can write.</summary>
    public static IReadOnlyList<DType> FloatTypes { get; } = [DType.F16, DType.BF16, DType.F32];

    /// <summary>
    /// The keys a typical released checkpoint holds: the required ones and the text encoders' optional layers, but not
    /// EMA copies, scheduler buffers or v-prediction markers. For SDXL that is sd_xl_base_1.0's 2515 keys.
    /// </summary>
    public static bool IsTypical(KeySpec spec) => spec.Required || spec.Group is "clip_l" or "clip_g";

    /// <summary>A dimension after scaling: max(1, ceil(d × scale)); zero stays zero.</summary>
    public static long ScaleDimension(long d, double scale) => d == 0 ? 0 : Math.Max(1, (long)Math.Ceiling(d * scale));

    /// <summary>The tensors a synthesis writes, in table order; invalid options are a <see cref="MergeException"/>.</summary>
    public static IReadOnlyList<TensorSpec> Plan(SynthesisOptions options)
    {
        if (!options.Architecture.IsKnown)
            throw new MergeException("synth needs a known architecture (sdxl or sd15)");
        if (!(options.Scale > 0 && options.Scale <= 1))
            throw new MergeException($"scale {options.Scale} is outside (0, 1]");
        if (!FloatTypes.Contains(options.FloatType))
            throw new MergeException($"dtype {options.FloatType.Name()} is not one synth writes; use f16, bf16 or f32");
        var typical = options.Architecture.Keys.Where(IsTypical).ToArray();
        foreach (string prefix in options.DropPrefixes)
            if (!typical.Any(k => k.Key.StartsWith(prefix, StringComparison.Ordinal)))
                throw new MergeException($"--drop-prefix '{prefix}' matches no key of {options.Architecture.Name}");
        var specs = new List<TensorSpec>(typical.Length);
        foreach (var key in typical)
        {
            if (options.DropPrefixes.Any(p => key.Key.StartsWith(p, StringComparison.Ordinal))) continue;
            var shape = key.Shape.Select(d => ScaleDimension(d, options.Scale)).ToImmutableArray();
            specs.Add(new TensorSpec(key.Key, key.DType.IsFloat() ? options.FloatType : key.DType, shape));
        }
        if (specs.Count == 0)
            throw new MergeException("--drop-prefix removes every key; nothing to write");
        return specs;
    }

    /// <summary>
    /// Writes the checkpoint to a temporary file beside <paramref name="path"/> and renames it into place;
    /// <paramref name="progress"/> hears the bytes written so far and in all, from worker threads.
    /// </summary>
    public static SynthesisResult Write(string path, SynthesisOptions options, CancellationToken cancellation = default, IProgress<(long Done, long Total)>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        var specs = Plan(options);
        var layout = SafetensorsLayout.Create(specs, options.Metadata);
        var chunks = new List<(TensorInfo Tensor, long First, int Count)>();
        foreach (var t in layout.Tensors)
            for (long first = 0; first < t.ElementCount; first += ChunkElements)
                chunks.Add((t, first, (int)Math.Min(ChunkElements, t.ElementCount - first)));

        using var writer = SafetensorsWriter.Create(path, layout);
        long written = layout.DataStart;
        var parallel = new ParallelOptions { CancellationToken = cancellation, MaxDegreeOfParallelism = Environment.ProcessorCount };
        Parallel.For(0, chunks.Count, parallel,
            () => (Values: new float[ChunkElements], Bytes: new byte[ChunkElements * sizeof(long)]),
            (i, _, buffers) =>
            {
                var (tensor, first, count) = chunks[i];
                var bytes = buffers.Bytes.AsSpan(0, count * tensor.DType.Size());
                Generate(tensor, options.Seed, first, buffers.Values.AsSpan(0, count), bytes);
                writer.Write(tensor, first * tensor.DType.Size(), bytes);
                progress?.Report((Interlocked.Add(ref written, bytes.Length), layout.TotalLength));
                return buffers;
            },
            _ => { });
        writer.Commit();
        long parameters = specs.Sum(s => s.ElementCount);
        return new SynthesisResult(writer.TargetPath, specs.Count, parameters, layout.TotalLength, clock.Elapsed);
    }

    /// <summary>
    /// Encodes elements [first, first + count) of a synthetic tensor into <paramref name="dest"/>; floats go through
    /// <paramref name="scratch"/> and one rounding to the tensor's dtype, integers count up from 0 like position_ids.
    /// </summary>
    public static void Generate(TensorInfo tensor, ulong seed, long first, Span<float> scratch, Span<byte> dest)
    {
        if (tensor.DType.IsFloat())
        {
            new SyntheticValues(tensor.Key, seed).Fill(first, scratch);
            DTypeConvert.FromFloat32(scratch, tensor.DType, dest);
            return;
        }
        switch (tensor.DType)
        {
            case DType.I64:
                {
                    var d = MemoryMarshal.Cast<byte, long>(dest);
                    for (int i = 0; i < d.Length; i++) d[i] = first + i;
                    break;
                }
            case DType.I32:
                {
                    var d = MemoryMarshal.Cast<byte, int>(dest);
                    for (int i = 0; i < d.Length; i++) d[i] = (int)(first + i);
                    break;
                }
            default:
                dest.Clear();
                break;
        }
    }
}
