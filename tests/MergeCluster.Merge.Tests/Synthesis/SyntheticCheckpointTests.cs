using System.Runtime.InteropServices;
using System.Security.Cryptography;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Synthesis;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Synthesis;

public class SyntheticCheckpointTests
{
    private static SynthesisOptions Small(ModelArchitecture arch, ulong seed, double scale = 0.05) =>
        new() { Architecture = arch, Seed = seed, Scale = scale };

    /// <summary>At scale 1 the plan is the released base model: sd_xl_base_1.0 and v1-5-pruned-emaonly, parameter for parameter.</summary>
    [Fact]
    public void Full_size_plans_match_the_released_base_models()
    {
        var sdxl = SyntheticCheckpoint.Plan(new SynthesisOptions { Architecture = ModelArchitecture.Sdxl, Seed = 0 });
        Assert.Equal(2515, sdxl.Count);
        Assert.Equal(3_468_837_868L, sdxl.Where(s => s.DType.IsFloat()).Sum(s => s.ElementCount));
        Assert.Equal(6_937_675_736L + 77 * 8, sdxl.Sum(s => s.ByteLength));
        Assert.All(sdxl.Where(s => s.DType.IsFloat()), s => Assert.Equal(DType.F16, s.DType));

        var sd15 = SyntheticCheckpoint.Plan(new SynthesisOptions { Architecture = ModelArchitecture.Sd15, Seed = 0, FloatType = DType.F32 });
        Assert.Equal(1131, sd15.Count);
        Assert.Equal(1_066_235_307L, sd15.Where(s => s.DType.IsFloat()).Sum(s => s.ElementCount));
    }

    [Fact]
    public void Scale_shrinks_every_dimension_with_a_floor_of_one()
    {
        var plan = SyntheticCheckpoint.Plan(Small(ModelArchitecture.Sdxl, 0)).ToDictionary(s => s.Key);
        Assert.Equal([2471L, 39L], plan["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"].Shape.ToArray()); // 49408, 768
        Assert.Equal([1L, 4L], plan["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"].Shape.ToArray()); // 1, 77
        Assert.Equal([16L, 1L, 1L, 1L], plan["model.diffusion_model.input_blocks.0.0.weight"].Shape.ToArray()); // 320, 4, 3, 3
        Assert.Empty(plan["conditioner.embedders.1.model.logit_scale"].Shape);
        foreach (var spec in ModelArchitecture.Sdxl.Keys.Where(SyntheticCheckpoint.IsTypical))
        {
            var scaled = plan[spec.Key].Shape;
            Assert.Equal(spec.Shape.Length, scaled.Length);
            for (int i = 0; i < scaled.Length; i++)
                Assert.Equal(Math.Max(1, (long)Math.Ceiling(spec.Shape[i] * 0.05)), scaled[i]);
        }
    }

    [Fact]
    public void Same_seed_writes_the_same_bytes()
    {
        using var dir = new TempDirectory();
        SyntheticCheckpoint.Write(dir.File("a.safetensors"), Small(ModelArchitecture.Sd15, 42));
        SyntheticCheckpoint.Write(dir.File("b.safetensors"), Small(ModelArchitecture.Sd15, 42));
        SyntheticCheckpoint.Write(dir.File("c.safetensors"), Small(ModelArchitecture.Sd15, 43));
        string Hash(string name) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(dir.File(name))));
        Assert.Equal(Hash("a.safetensors"), Hash("b.safetensors"));
        Assert.NotEqual(Hash("a.safetensors"), Hash("c.safetensors"));
    }

    /// <summary>Seeds behave like fine-tunes of one base: close to each other relative to the weights, yet not equal.</summary>
    [Fact]
    public void Different_seeds_are_different_but_close_fine_tunes()
    {
        using var dir = new TempDirectory();
        string a = dir.File("a.safetensors"), b = dir.File("b.safetensors");
        SyntheticCheckpoint.Write(a, Small(ModelArchitecture.Sdxl, 1) with { FloatType = DType.F32 });
        SyntheticCheckpoint.Write(b, Small(ModelArchitecture.Sdxl, 2) with { FloatType = DType.F32 });
        var ra = RawSafetensors.Read(a);
        var rb = RawSafetensors.Read(b);
        double diff = 0, norm = 0, differing = 0, total = 0;
        foreach (var t in ra.Tensors.Where(t => t.DType == "F32" && t.Key.StartsWith("model.diffusion_model.", StringComparison.Ordinal)))
        {
            var x = MemoryMarshal.Cast<byte, float>(ra.Bytes(t));
            var y = MemoryMarshal.Cast<byte, float>(rb.Bytes(rb[t.Key]));
            for (int i = 0; i < x.Length; i++)
            {
                diff += (x[i] - (double)y[i]) * (x[i] - (double)y[i]);
                norm += (double)x[i] * x[i];
                if (x[i] != y[i]) differing++;
                total++;
            }
        }
        double relative = Math.Sqrt(diff / norm);
        Assert.InRange(relative, 0.005, 0.1);
        Assert.True(differing > 0.99 * total, $"only {differing} of {total} values differ");
    }

    [Fact]
    public void Values_have_realistic_magnitudes()
    {
        var weight = new SyntheticValues("model.diffusion_model.input_blocks.1.0.in_layers.2.weight", 5);
        var norm = new SyntheticValues("conditioner.embedders.1.model.transformer.resblocks.0.ln_1.weight", 5);
        var values = new float[1 << 16];
        weight.Fill(0, values);
        var (mean, std) = Moments(values);
        Assert.InRange(mean, -0.001, 0.001);
        Assert.InRange(std, 0.019, 0.021);
        norm.Fill(0, values);
        (mean, _) = Moments(values);
        Assert.InRange(mean, 0.99, 1.01);
        Assert.Equal(MathF.Log(100f), new SyntheticValues("conditioner.embedders.1.model.logit_scale", 5)[0]);
    }

    private static (double Mean, double Std) Moments(float[] values)
    {
        double mean = values.Average(v => (double)v);
        return (mean, Math.Sqrt(values.Average(v => (v - mean) * (v - mean))));
    }

    /// <summary>Any range is a pure function of its indices, so chunks written in parallel never depend on where a chunk starts.</summary>
    [Fact]
    public void Any_range_is_generated_independently()
    {
        var values = new SyntheticValues("model.diffusion_model.out.2.weight", 9);
        var whole = new float[1000];
        values.Fill(0, whole);
        foreach (var (first, count) in new[] { (0, 1), (3, 17), (7, 993), (500, 9) })
        {
            var part = new float[count];
            values.Fill(first, part);
            Assert.Equal(whole.AsSpan(first, count).ToArray(), part);
            Assert.Equal(whole[first], values[first]);
        }
        // Across the 2^32 boundary where the counter's high half changes.
        long edge = (1L << 32) - 3;
        var across = new float[6];
        values.Fill(edge, across);
        for (int i = 0; i < across.Length; i++) Assert.Equal(values[edge + i], across[i]);
        Assert.NotEqual(values[edge + 3], values[3]);
    }

    [Fact]
    public void Written_file_holds_the_generated_values_ids_and_metadata()
    {
        using var dir = new TempDirectory();
        string path = dir.File("m.safetensors");
        var result = SyntheticCheckpoint.Write(path, Small(ModelArchitecture.Sdxl, 11, 0.1) with
        {
            FloatType = DType.F32,
            Metadata = new Dictionary<string, string> { ["modelspec.title"] = "synthetic" },
        });
        var raw = RawSafetensors.Read(path);
        Assert.Equal(new FileInfo(path).Length, result.Bytes);
        Assert.Equal(raw.Tensors.Count, result.Tensors);
        Assert.Equal(raw.Tensors.Sum(t => t.Elements), result.Parameters);
        Assert.Equal("synthetic", raw.Metadata["modelspec.title"]);

        var ids = raw["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"];
        Assert.Equal("I64", ids.DType);
        Assert.Equal([0L, 1, 2, 3, 4, 5, 6, 7], MemoryMarshal.Cast<byte, long>(raw.Bytes(ids)).ToArray());

        var token = raw["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"];
        var stored = MemoryMarshal.Cast<byte, float>(raw.Bytes(token)).ToArray();
        var expected = new float[stored.Length];
        new SyntheticValues(token.Key, 11).Fill(0, expected);
        Assert.Equal(expected, stored);
    }

    [Fact]
    public void Invalid_options_are_refused_with_one_line()
    {
        using var dir = new TempDirectory();
        Assert.Contains("matches no key", Assert.Throws<MergeException>(() =>
            SyntheticCheckpoint.Plan(Small(ModelArchitecture.Sd15, 0) with { DropPrefixes = ["conditioner."] })).Message);
        Assert.Contains("every key", Assert.Throws<MergeException>(() =>
            SyntheticCheckpoint.Plan(Small(ModelArchitecture.Sd15, 0) with { DropPrefixes = ["model.", "cond_stage_model.", "first_stage_model."] })).Message);
        Assert.Throws<MergeException>(() => SyntheticCheckpoint.Plan(Small(ModelArchitecture.Sdxl, 0, 0)));
        Assert.Throws<MergeException>(() => SyntheticCheckpoint.Plan(Small(ModelArchitecture.Sdxl, 0, 1.5)));
        Assert.Throws<MergeException>(() => SyntheticCheckpoint.Plan(Small(ModelArchitecture.Unknown, 0)));
        Assert.Throws<MergeException>(() => SyntheticCheckpoint.Plan(Small(ModelArchitecture.Sdxl, 0) with { FloatType = DType.I32 }));
        Assert.Empty(Directory.GetFiles(dir.Path));
    }
}
