using System.Collections.Immutable;
using System.Runtime.InteropServices;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Merging;

/// <summary>Small real checkpoints for merge tests: SDXL-style keys, chosen dtypes, values from a seeded generator.</summary>
public static class Checkpoints
{
    public sealed record Tensor(string Key, DType DType, long[] Shape);

    /// <summary>A few keys from each component, a non-float key, and one (<paramref name="large"/>, 700×1000 by default) large enough to span several chunks.</summary>
    public static IReadOnlyList<Tensor> SdxlLike(DType dtype, long[]? large = null) =>
    [
        new("conditioner.embedders.0.transformer.text_model.embeddings.position_ids", DType.I64, [1, 77]),
        new("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", dtype, [64, 32]),
        new("conditioner.embedders.1.model.ln_final.weight", dtype, [40]),
        new("conditioner.embedders.1.model.text_projection", dtype, [16, 16]),
        new("first_stage_model.decoder.conv_in.weight", dtype, [8, 4, 3, 3]),
        new("model.diffusion_model.input_blocks.0.0.weight", dtype, [32, 4, 3, 3]),
        new("model.diffusion_model.input_blocks.4.1.proj_in.weight", dtype, large ?? [700, 1000]),
        new("model.diffusion_model.middle_block.1.norm.weight", dtype, [33]),
        new("model.diffusion_model.out.2.bias", dtype, [4]),
        new("model.diffusion_model.output_blocks.8.0.skip_connection.bias", dtype, [17]),
        new("model.diffusion_model.time_embed.0.weight", dtype, [64, 16]),
    ];

    /// <summary>Writes a checkpoint: base values plus a seed-dependent deviation, like fine-tunes of one model.</summary>
    public static string Write(string path, int seed, DType dtype, Func<string, bool>? keep = null, IReadOnlyList<Tensor>? tensors = null, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = (tensors ?? SdxlLike(dtype)).Where(t => keep?.Invoke(t.Key) ?? true).ToList();
        var specs = list.Select(t => new TensorSpec(t.Key, t.DType, t.Shape.ToImmutableArray())).ToList();
        var layout = SafetensorsLayout.Create(specs, metadata);
        using var writer = SafetensorsWriter.Create(path, layout);
        foreach (var t in list)
        {
            var info = layout[t.Key];
            long n = info.ElementCount;
            var bytes = new byte[info.ByteLength];
            if (t.DType.IsFloat())
            {
                var values = new double[n];
                // A stable seed per key: string.GetHashCode changes from process to process, and so would every test's data.
                var shared = new Random((int)(MergeCluster.Merge.Synthesis.CounterHash.KeyStream(t.Key) & 0x7fffffff) ^ 12345);
                var own = new Random(seed * 7919 + t.Key.Length);
                for (long i = 0; i < n; i++) values[i] = shared.NextDouble() * 0.2 - 0.1 + (own.NextDouble() - 0.5) * 0.01;
                DTypeConvert.FromFloat64(values, t.DType, bytes);
            }
            else
            {
                var ints = MemoryMarshal.Cast<byte, long>(bytes.AsSpan());
                for (int i = 0; i < ints.Length; i++) ints[i] = i;
            }
            if (bytes.Length > 0) writer.Write(info, 0, bytes);
        }
        writer.Commit();
        return path;
    }

    /// <summary>A tensor's values decoded to float64 by an independent scalar path.</summary>
    public static double[] Values(string path, string key)
    {
        using var file = SafetensorsFile.Open(path);
        var t = file.Get(key);
        var bytes = file.Bytes(t);
        var result = new double[t.ElementCount];
        for (int i = 0; i < result.Length; i++)
        {
            result[i] = t.DType switch
            {
                DType.F16 => (double)BitConverter.UInt16BitsToHalf(BitConverter.ToUInt16(bytes.Slice(i * 2, 2))),
                DType.BF16 => BitConverter.Int32BitsToSingle(BitConverter.ToUInt16(bytes.Slice(i * 2, 2)) << 16),
                DType.F32 => BitConverter.ToSingle(bytes.Slice(i * 4, 4)),
                DType.F64 => BitConverter.ToDouble(bytes.Slice(i * 8, 8)),
                _ => throw new NotSupportedException(t.DType.ToString()),
            };
        }
        return result;
    }

    public static byte[] RawBytes(string path, string key)
    {
        using var file = SafetensorsFile.Open(path);
        return file.Bytes(file.Get(key)).ToArray();
    }
}
