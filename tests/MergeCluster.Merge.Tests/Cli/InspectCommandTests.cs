using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using MergeCluster.Merge.Tests.Support;

namespace MergeCluster.Merge.Tests.Cli;

/// <summary>Synthetic files written once through `mergecluster synth` for the inspect tests.</summary>
public sealed class InspectFiles : IDisposable
{
    private readonly TempDirectory _dir = new();

    public InspectFiles()
    {
        Full = _dir.File("full.safetensors");
        Pruned = _dir.File("no-vae.safetensors");
        Support.Cli.Run("synth", "--arch", "sdxl", "--seed", "5", "--scale", "0.05", "--meta", "modelspec.title=Synthetic XL", "--meta", "note=a=b", "-o", Full).EnsureSuccess();
        Support.Cli.Run("synth", "--arch", "sdxl", "--seed", "6", "--scale", "0.03", "--drop-prefix", "first_stage_model.", "-o", Pruned).EnsureSuccess();
    }

    public string Full { get; }
    public string Pruned { get; }
    public string Directory => _dir.Path;

    public void Dispose() => _dir.Dispose();
}

public class InspectCommandTests(InspectFiles files) : IClassFixture<InspectFiles>
{
    private static readonly (string Prefix, string Component)[] SdxlPrefixes =
    [
        ("model.diffusion_model.", "unet"),
        ("conditioner.embedders.0.", "te0"),
        ("conditioner.embedders.1.", "te1"),
        ("first_stage_model.", "vae"),
    ];

    private static string ComponentOf(string key) =>
        SdxlPrefixes.FirstOrDefault(p => key.StartsWith(p.Prefix, StringComparison.Ordinal)).Component ?? "other";

    /// <summary>The content hash as the spec states it: per key in ordinal order, "key\tDTYPE\tshape\n" then the bytes.</summary>
    private static string ContentHash(RawSafetensors raw, IEnumerable<RawTensor> tensors)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var t in tensors.OrderBy(t => t.Key, StringComparer.Ordinal))
        {
            sha.AppendData(Encoding.UTF8.GetBytes($"{t.Key}\t{t.DType}\t{string.Join(",", t.Shape)}\n"));
            sha.AppendData(raw.Bytes(t));
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    private static string Sha256Hex(ReadOnlySpan<byte> bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));

    [Fact]
    public void Json_agrees_with_values_computed_independently_from_the_file()
    {
        var json = Support.Cli.Run("inspect", files.Full, "--json").Json();
        byte[] whole = File.ReadAllBytes(files.Full);
        Assert.True(whole.Length > 0x110000, "the file must reach past the legacy hash window");
        var raw = RawSafetensors.Read(files.Full);

        Assert.Equal("sdxl", json.GetProperty("architecture").GetString());
        Assert.Equal(Sha256Hex(whole), json.GetProperty("sha256").GetString());
        Assert.Equal(Sha256Hex(whole)[..10], json.GetProperty("autov2").GetString());
        Assert.Equal(Sha256Hex(whole.AsSpan(0x100000, 0x10000))[..8], json.GetProperty("legacy_hash").GetString());
        Assert.Equal(whole.Length, json.GetProperty("size").GetInt64());
        Assert.Equal(raw.Tensors.Count, json.GetProperty("tensors").GetInt32());
        Assert.Equal(raw.Tensors.Sum(t => t.Elements), json.GetProperty("parameters").GetInt64());
        Assert.Empty(json.GetProperty("missing_keys").EnumerateArray());
        Assert.Empty(json.GetProperty("unknown_keys").EnumerateArray());
        Assert.Equal("Synthetic XL", json.GetProperty("metadata").GetProperty("modelspec.title").GetString());
        Assert.Equal("a=b", json.GetProperty("metadata").GetProperty("note").GetString());
        Assert.False(json.TryGetProperty("nonfinite", out _));

        var components = json.GetProperty("components");
        var expected = raw.Tensors.GroupBy(t => ComponentOf(t.Key)).ToDictionary(g => g.Key, g => g.ToArray());
        Assert.Equal(["te0", "te1", "unet", "vae"], expected.Keys.Order());
        Assert.Equal(expected.Keys.Order(), components.EnumerateObject().Select(p => p.Name).Order());
        foreach (var (name, tensors) in expected)
        {
            var c = components.GetProperty(name);
            Assert.Equal(tensors.Length, c.GetProperty("keys").GetInt32());
            Assert.Equal(tensors.Sum(t => t.Elements), c.GetProperty("parameters").GetInt64());
            Assert.Equal(tensors.Sum(t => t.ByteLength), c.GetProperty("bytes").GetInt64());
            Assert.Equal(ContentHash(raw, tensors), c.GetProperty("hash").GetString());
            Assert.Equal(0, c.GetProperty("missing").GetInt32());
            var dtypes = c.GetProperty("dtypes").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetInt32());
            Assert.Equal(tensors.GroupBy(t => t.DType).ToDictionary(g => g.Key, g => g.Count()), dtypes);
        }
        Assert.Equal(1, components.GetProperty("te0").GetProperty("dtypes").GetProperty("I64").GetInt32());
    }

    /// <summary>Two seeds differ in every component; a file that reuses one component keeps that component's hash.</summary>
    [Fact]
    public void Component_hashes_tell_an_original_text_encoder_from_a_tuned_one()
    {
        string other = Path.Combine(files.Directory, "seed5-no-unet.safetensors");
        Support.Cli.Run("synth", "--arch", "sdxl", "--seed", "5", "--scale", "0.05", "--drop-prefix", "model.diffusion_model.", "-o", other).EnsureSuccess();
        string tuned = Path.Combine(files.Directory, "seed9.safetensors");
        Support.Cli.Run("synth", "--arch", "sdxl", "--seed", "9", "--scale", "0.05", "-o", tuned).EnsureSuccess();
        var a = Support.Cli.Run("inspect", "--json", files.Full).Json().GetProperty("components");
        var b = Support.Cli.Run("inspect", "--json", other).Json().GetProperty("components");
        var c = Support.Cli.Run("inspect", "--json", tuned).Json().GetProperty("components");
        string Hash(JsonElement components, string name) => components.GetProperty(name).GetProperty("hash").GetString()!;
        foreach (string name in new[] { "te0", "te1", "vae" })
        {
            Assert.Equal(Hash(a, name), Hash(b, name));
            Assert.NotEqual(Hash(a, name), Hash(c, name));
        }
        Assert.Equal(0, b.GetProperty("unet").GetProperty("keys").GetInt32());
        Assert.Equal(JsonValueKind.Null, b.GetProperty("unet").GetProperty("hash").ValueKind);
    }

    [Fact]
    public void Pruned_file_lists_every_missing_key_in_json_and_the_first_ten_for_people()
    {
        var json = Support.Cli.Run("inspect", "--json", files.Pruned).Json();
        var missing = json.GetProperty("missing_keys").EnumerateArray().Select(e => e.GetString()!).ToArray();
        Assert.Equal(248, missing.Length);
        Assert.All(missing, k => Assert.StartsWith("first_stage_model.", k));
        Assert.Equal(missing.Length, missing.Distinct().Count());
        Assert.Equal("sdxl", json.GetProperty("architecture").GetString());
        var vae = json.GetProperty("components").GetProperty("vae");
        Assert.Equal(0, vae.GetProperty("keys").GetInt32());
        Assert.Equal(248, vae.GetProperty("missing").GetInt32());

        var human = Support.Cli.Run("inspect", files.Pruned).EnsureSuccess().Stdout;
        Assert.Contains("pruned: 248 required keys missing", human);
        Assert.Contains("missing keys (248):", human);
        Assert.Contains(missing[9], human);
        Assert.DoesNotContain(missing[10], human);
        Assert.Contains("and 238 more", human);
        Assert.DoesNotContain("\u001b[", human);
    }

    [Fact]
    public void Human_output_shows_architecture_hashes_components_and_metadata()
    {
        var json = Support.Cli.Run("inspect", files.Full, "--json").Json();
        var result = Support.Cli.Run("inspect", files.Full).EnsureSuccess();
        Assert.Empty(result.Stderr);
        string text = result.Stdout;
        Assert.Contains("sdxl - SDXL", text);
        Assert.Contains(json.GetProperty("autov2").GetString()!, text);
        Assert.Contains(json.GetProperty("legacy_hash").GetString()!, text);
        Assert.Contains(json.GetProperty("components").GetProperty("te1").GetProperty("hash").GetString()![..12], text);
        Assert.Contains("Synthetic XL", text);
        Assert.Contains("unknown keys: none", text);
    }

    /// <summary>Unknown keys and non-finite values, planted in a copy whose every other byte comes from a synthetic file.</summary>
    [Fact]
    public void Scan_counts_non_finite_values_per_component_and_unknown_keys_are_listed()
    {
        string planted = Path.Combine(files.Directory, "planted.safetensors");
        var raw = RawSafetensors.Read(files.Full);
        var unet = raw.Tensors.First(t => t.Key.StartsWith("model.diffusion_model.", StringComparison.Ordinal) && t.DType == "F16" && t.Elements >= 4);
        CheckpointEdits.CopyWithExtraTensor(files.Full, planted, "extra.scale", "F16", [4],
            [0x00, 0x7E, 0x00, 0x7C, 0x00, 0xFC, 0x00, 0x3C]); // NaN, +Inf, -Inf, 1.0
        CheckpointEdits.Patch(planted, unet.Key, 4, [0x00, 0x7E]); // one NaN in the UNET, third element

        var json = Support.Cli.Run("inspect", planted, "--json", "--scan").Json();
        Assert.Equal("sdxl", json.GetProperty("architecture").GetString());
        Assert.Equal(["extra.scale"], json.GetProperty("unknown_keys").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal(4, json.GetProperty("nonfinite").GetInt64());
        var components = json.GetProperty("components");
        Assert.Equal(1, components.GetProperty("unet").GetProperty("nonfinite").GetInt64());
        Assert.Equal(3, components.GetProperty("other").GetProperty("nonfinite").GetInt64());
        Assert.Equal(0, components.GetProperty("te1").GetProperty("nonfinite").GetInt64());
        var byKey = json.GetProperty("nonfinite_keys").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetInt64());
        Assert.Equal(new Dictionary<string, long> { [unet.Key] = 1, ["extra.scale"] = 3 }, byKey);

        var clean = Support.Cli.Run("inspect", files.Full, "--json", "--scan").Json();
        Assert.Equal(0, clean.GetProperty("nonfinite").GetInt64());
        Assert.Empty(clean.GetProperty("nonfinite_keys").EnumerateObject());
    }

    [Fact]
    public void A_file_of_no_known_layout_is_unknown_with_components_by_prefix()
    {
        string lora = Path.Combine(files.Directory, "lora.safetensors");
        CheckpointEdits.CreateZeroed(lora,
        [
            ("lora_unet_down_blocks_0_attentions_0_proj_in.alpha", MergeCluster.Safetensors.DType.F16, []),
            ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", MergeCluster.Safetensors.DType.F16, [4, 320]),
            ("first_stage_model.decoder.conv_in.bias", MergeCluster.Safetensors.DType.F32, [512]),
        ]);
        var json = Support.Cli.Run("inspect", "--json", lora).Json();
        Assert.Equal("unknown", json.GetProperty("architecture").GetString());
        Assert.Equal(2, json.GetProperty("components").GetProperty("other").GetProperty("keys").GetInt32());
        Assert.Equal(1, json.GetProperty("components").GetProperty("vae").GetProperty("keys").GetInt32());
        Assert.Empty(json.GetProperty("missing_keys").EnumerateArray());
        Assert.Empty(json.GetProperty("unknown_keys").EnumerateArray());
        Assert.Contains("not compared, no known architecture", Support.Cli.Run("inspect", lora).EnsureSuccess().Stdout);
    }

    [Fact]
    public void A_corrupt_file_is_one_line_naming_the_file()
    {
        string truncated = Path.Combine(files.Directory, "truncated.safetensors");
        byte[] bytes = File.ReadAllBytes(files.Full);
        File.WriteAllBytes(truncated, bytes[..(bytes.Length - 100)]);
        Support.Cli.Run("inspect", truncated).AssertOneLineError(truncated);

        string garbage = Path.Combine(files.Directory, "garbage.safetensors");
        File.WriteAllBytes(garbage, Encoding.ASCII.GetBytes("\x10\0\0\0\0\0\0\0{\"a\": [1, 2, 3"));
        Support.Cli.Run("inspect", "--json", garbage).AssertOneLineError(garbage);

        Support.Cli.Run("inspect", Path.Combine(files.Directory, "absent.safetensors")).AssertOneLineError("absent.safetensors");
    }

    [Fact]
    public void A_pickle_checkpoint_is_refused()
    {
        string ckpt = Path.Combine(files.Directory, "model.ckpt");
        File.Copy(files.Full, ckpt, overwrite: true);
        var result = Support.Cli.Run("inspect", ckpt);
        result.AssertOneLineError(ckpt);
        Assert.Contains("pickle", result.Stderr);
    }
}
