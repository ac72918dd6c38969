using System.Collections.Immutable;
using MergeCluster.Merge.Tests.Merging;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Selection;

/// <summary>Checkpoints for model-selection tests, and an independent float64 reference of the distances between them.</summary>
public static class SelectionModels
{
    /// <summary>
    /// Writes a model whose float tensors are f(key, base value, other value) rounded to f16, and whose tensors under
    /// <paramref name="rawFromBase"/> are the base's bytes exactly (a model that kept the original CLIP).
    /// </summary>
    public static string Derived(string path, string basePath, string otherPath, Func<double, double, double> f, string? rawFromBase = null)
    {
        using var b = SafetensorsFile.Open(basePath);
        var specs = b.Tensors.Select(t => new TensorSpec(t.Key, t.DType.IsFloat() ? DType.F16 : t.DType, t.Shape)).ToList();
        var layout = SafetensorsLayout.Create(specs, null);
        using var writer = SafetensorsWriter.Create(path, layout);
        foreach (var t in b.Tensors)
        {
            var info = layout[t.Key];
            if (!t.DType.IsFloat() || (rawFromBase is not null && t.Key.StartsWith(rawFromBase, StringComparison.Ordinal)))
            {
                if (t.DType != info.DType) throw new InvalidOperationException("raw copies need the same dtype");
                writer.Write(info, 0, b.Bytes(t));
                continue;
            }
            var x = Checkpoints.Values(basePath, t.Key);
            var y = Checkpoints.Values(otherPath, t.Key);
            var values = new double[x.Length];
            for (int i = 0; i < x.Length; i++) values[i] = f(x[i], y[i]);
            var bytes = new byte[info.ByteLength];
            DTypeConvert.FromFloat64(values, DType.F16, bytes);
            writer.Write(info, 0, bytes);
        }
        writer.Commit();
        return path;
    }

    /// <summary>Writes the SDXL-like test model with one tensor's shape changed.</summary>
    public static string WithReshaped(string path, int seed, string key, long[] shape) =>
        Checkpoints.Write(path, seed, DType.F16, tensors: Checkpoints.SdxlLike(DType.F16).Select(t => t.Key == key ? t with { Shape = shape } : t).ToList());

    /// <summary>The reference: L2 and cosine over the float keys both hold with one shape, by a plain scalar loop.</summary>
    public static (double L2, double Cosine, int Keys) Reference(string a, string b, Func<string, bool> inScope, ISet<string>? exclude = null)
    {
        using var fa = SafetensorsFile.Open(a);
        using var fb = SafetensorsFile.Open(b);
        double dist = 0, dot = 0, na = 0, nb = 0;
        int keys = 0;
        foreach (var t in fa.Tensors)
        {
            if (!t.DType.IsFloat() || !inScope(t.Key) || (exclude?.Contains(t.Key) ?? false)) continue;
            if (!fb.Header.TryGet(t.Key, out var u) || !u.Shape.SequenceEqual(t.Shape)) continue;
            var x = Checkpoints.Values(a, t.Key);
            var y = Checkpoints.Values(b, t.Key);
            for (int i = 0; i < x.Length; i++)
            {
                double d = x[i] - y[i];
                dist += d * d;
                dot += x[i] * y[i];
                na += x[i] * x[i];
                nb += y[i] * y[i];
            }
            keys++;
        }
        return (Math.Sqrt(dist), dot / (Math.Sqrt(na) * Math.Sqrt(nb)), keys);
    }

    public static void AssertClose(double expected, double actual, string what)
    {
        double scale = Math.Max(Math.Abs(expected), 1e-300);
        Assert.True(Math.Abs(expected - actual) <= 1e-9 * scale, $"{what}: expected {expected:R}, got {actual:R} (relative error {Math.Abs(expected - actual) / scale:E2})");
    }

    /// <summary>A PNG that decodes far enough to trust: the signature, an IHDR chunk first, a non-zero size, and an IEND at the end.</summary>
    public static (int Width, int Height) PngSize(string path)
    {
        var bytes = File.ReadAllBytes(path);
        byte[] signature = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A];
        Assert.True(bytes.Length > 33 && bytes.AsSpan(0, 8).SequenceEqual(signature), $"{path}: not a PNG");
        Assert.Equal("IHDR", System.Text.Encoding.ASCII.GetString(bytes, 12, 4));
        Assert.Equal("IEND", System.Text.Encoding.ASCII.GetString(bytes, bytes.Length - 8, 4));
        int width = System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(16));
        int height = System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(20));
        Assert.True(width > 100 && height > 100, $"{path}: {width}x{height}");
        return (width, height);
    }

    public static ImmutableArray<string> Components => ["unet", "te0", "te1", "vae"];

    public static Func<string, bool> Prefix(string component) => component switch
    {
        "unet" => k => k.StartsWith("model.diffusion_model.", StringComparison.Ordinal),
        "te0" => k => k.StartsWith("conditioner.embedders.0.", StringComparison.Ordinal),
        "te1" => k => k.StartsWith("conditioner.embedders.1.", StringComparison.Ordinal),
        "vae" => k => k.StartsWith("first_stage_model.", StringComparison.Ordinal),
        _ => throw new ArgumentException(component),
    };
}
