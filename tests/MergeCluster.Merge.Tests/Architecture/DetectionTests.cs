using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Synthesis;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Architecture;

public class DetectionTests
{
    private static readonly ModelArchitecture Sdxl = ModelArchitecture.Sdxl;
    private static readonly ModelArchitecture Sd15 = ModelArchitecture.Sd15;

    private static string[] Typical(ModelArchitecture arch) => arch.Keys.Where(SyntheticCheckpoint.IsTypical).Select(k => k.Key).ToArray();

    private static string[] RequiredUnder(ModelArchitecture arch, params string[] prefixes) =>
        arch.Keys.Where(k => k.Required && prefixes.Any(p => k.Key.StartsWith(p, StringComparison.Ordinal))).Select(k => k.Key).ToArray();

    [Theory]
    [InlineData("sdxl")]
    [InlineData("sd15")]
    public void A_complete_key_set_is_detected_with_nothing_missing_or_unknown(string name)
    {
        var arch = ModelArchitecture.Parse(name);
        foreach (var keys in new[] { Typical(arch), arch.Keys.Select(k => k.Key).ToArray(), Typical(arch).Reverse().ToArray() })
        {
            var d = ModelArchitecture.Detect(keys);
            Assert.Same(arch, d.Architecture);
            Assert.Empty(d.MissingKeys);
            Assert.Empty(d.UnknownKeys);
            Assert.False(d.IsPruned);
        }
    }

    [Fact]
    public void A_unet_only_file_is_detected_and_lacks_exactly_the_other_components()
    {
        var unet = Typical(Sdxl).Where(k => k.StartsWith("model.diffusion_model.", StringComparison.Ordinal)).ToArray();
        var d = ModelArchitecture.Detect(unet);
        Assert.Same(Sdxl, d.Architecture);
        Assert.Equal(RequiredUnder(Sdxl, "conditioner.", "first_stage_model."), d.MissingKeys);
        Assert.Empty(d.UnknownKeys);

        var sd15Unet = Typical(Sd15).Where(k => k.StartsWith("model.diffusion_model.", StringComparison.Ordinal)).ToArray();
        Assert.Same(Sd15, ModelArchitecture.Detect(sd15Unet).Architecture);
    }

    [Fact]
    public void Old_clip_names_and_ema_names_count_as_known_through_the_aliases()
    {
        var keys = Sd15.Keys.Where(k => k.Required || k.Group == "ema")
            .Select(k => k.Aliases.IsEmpty ? k.Key : k.Aliases[0]).ToArray();
        Assert.Contains("cond_stage_model.transformer.encoder.layers.0.layer_norm1.bias", keys);
        var d = ModelArchitecture.Detect(keys);
        Assert.Same(Sd15, d.Architecture);
        Assert.Empty(d.MissingKeys);
        Assert.Empty(d.UnknownKeys);
    }

    [Fact]
    public void Extra_keys_are_reported_as_unknown_in_file_order()
    {
        string[] extra = ["lora_unet_a.alpha", "model.diffusion_model.not_a_layer.weight", "conditioner.embedders.0.extra"];
        var d = ModelArchitecture.Detect([extra[0], .. Typical(Sdxl), extra[1], extra[2]]);
        Assert.Same(Sdxl, d.Architecture);
        Assert.Equal(extra, d.UnknownKeys);
        Assert.Empty(d.MissingKeys);
    }

    [Fact]
    public void Files_that_no_layout_explains_are_unknown()
    {
        Assert.Same(ModelArchitecture.Unknown, ModelArchitecture.Detect([]).Architecture);
        Assert.Same(ModelArchitecture.Unknown, ModelArchitecture.Detect(["a", "b.weight"]).Architecture);
        // The VAE is the same in both layouts: a VAE alone cannot tell them apart.
        var vae = Typical(Sdxl).Where(k => k.StartsWith("first_stage_model.", StringComparison.Ordinal)).ToArray();
        Assert.Equal(vae, Typical(Sd15).Where(k => k.StartsWith("first_stage_model.", StringComparison.Ordinal)));
        Assert.Same(ModelArchitecture.Unknown, ModelArchitecture.Detect(vae).Architecture);
        // A fifth of the keys foreign to SDXL is more than a pruned or annotated SDXL file carries.
        var typical = Typical(Sdxl);
        var mostly = typical.Take(2000).Concat(Enumerable.Range(0, 500).Select(i => $"foreign.{i}")).ToArray();
        var d = ModelArchitecture.Detect(mostly);
        Assert.Same(ModelArchitecture.Unknown, d.Architecture);
        Assert.Empty(d.MissingKeys);
        Assert.Empty(d.UnknownKeys);
    }

    [Theory]
    [InlineData("sdxl", "f16")]
    [InlineData("sd15", "f32")]
    [InlineData("sdxl", "f32")]
    public void Synthetic_files_are_detected_from_their_header(string name, string dtype)
    {
        using var dir = new TempDirectory();
        var arch = ModelArchitecture.Parse(name);
        DTypes.TryParseUser(dtype, out var floatType);
        string path = dir.File("m.safetensors");
        SyntheticCheckpoint.Write(path, new SynthesisOptions { Architecture = arch, Seed = 7, Scale = 0.02, FloatType = floatType });
        var d = ModelArchitecture.Detect(SafetensorsFile.ReadHeader(path, out _));
        Assert.Same(arch, d.Architecture);
        Assert.Empty(d.MissingKeys);
        Assert.Empty(d.UnknownKeys);
    }

    [Theory]
    [InlineData("sdxl", new[] { "first_stage_model." })]
    [InlineData("sdxl", new[] { "conditioner.embedders.0.", "conditioner.embedders.1.", "first_stage_model." })]
    [InlineData("sdxl", new[] { "model.diffusion_model." })]
    [InlineData("sd15", new[] { "first_stage_model." })]
    [InlineData("sd15", new[] { "cond_stage_model." })]
    public void Pruned_synthetic_files_report_exactly_the_dropped_required_keys(string name, string[] dropped)
    {
        using var dir = new TempDirectory();
        var arch = ModelArchitecture.Parse(name);
        string path = dir.File("pruned.safetensors");
        SyntheticCheckpoint.Write(path, new SynthesisOptions { Architecture = arch, Seed = 3, Scale = 0.02, DropPrefixes = dropped });
        var d = ModelArchitecture.Detect(SafetensorsFile.ReadHeader(path, out _));
        Assert.Same(arch, d.Architecture);
        Assert.Equal(RequiredUnder(arch, dropped), d.MissingKeys);
        Assert.Empty(d.UnknownKeys);
    }

    /// <summary>Order in the file and the float dtype say nothing about the layout: a reversed bf16 copy is still SDXL.</summary>
    [Fact]
    public void Reordered_bf16_files_are_detected()
    {
        using var dir = new TempDirectory();
        string source = dir.File("a.safetensors"), copy = dir.File("reversed-bf16.safetensors");
        string last;
        SyntheticCheckpoint.Write(source, new SynthesisOptions { Architecture = Sdxl, Seed = 1, Scale = 0.02, DropPrefixes = ["first_stage_model."] });
        using (var file = SafetensorsFile.Open(source))
        {
            last = file.Tensors[^1].Key;
            // F16 and BF16 have the same width, so relabelling keeps every byte range valid.
            var specs = file.Tensors.Reverse()
                .Select(t => new TensorSpec(t.Key, t.DType == DType.F16 ? DType.BF16 : t.DType, t.Shape)).ToArray();
            using var writer = SafetensorsWriter.Create(copy, SafetensorsLayout.Create(specs, null));
            foreach (var t in file.Tensors) writer.Write(writer.Layout[t.Key], 0, file.Bytes(t));
            writer.Commit();
        }
        var header = SafetensorsFile.ReadHeader(copy, out _);
        Assert.Equal(last, header.Tensors[0].Key);
        Assert.Contains(header.Tensors, t => t.DType == DType.BF16);
        var d = ModelArchitecture.Detect(header);
        Assert.Same(Sdxl, d.Architecture);
        Assert.Equal(RequiredUnder(Sdxl, "first_stage_model."), d.MissingKeys);
        Assert.Empty(d.UnknownKeys);
    }
}
