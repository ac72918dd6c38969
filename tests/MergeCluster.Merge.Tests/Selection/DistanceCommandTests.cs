using System.Text.Json;
using MergeCluster.Merge.Tests.Merging;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;
using static MergeCluster.Merge.Tests.Selection.SelectionModels;

namespace MergeCluster.Merge.Tests.Selection;

/// <summary>`mergecluster distance` as users run it, against an independent float64 computation on real files.</summary>
public class DistanceCommandTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public DistanceCommandTests()
    {
        Checkpoints.Write(_dir.File("base.safetensors"), 100, DType.F16);
        Checkpoints.Write(_dir.File("a.safetensors"), 1, DType.F16);
        Checkpoints.Write(_dir.File("b.safetensors"), 2, DType.F16);
        // Trained with a large learning rate: ten times a's step away from the base, in every component.
        Derived(_dir.File("far.safetensors"), _dir.File("base.safetensors"), _dir.File("a.safetensors"), (x, y) => x + 10 * (y - x));
        // b's weights, but still the base's own CLIP-L, byte for byte.
        Derived(_dir.File("sameclip.safetensors"), _dir.File("base.safetensors"), _dir.File("b.safetensors"), (_, y) => y, rawFromBase: "conditioner.embedders.0.");
    }

    public void Dispose() => _dir.Dispose();

    private CliResult Run(params string[] args) => Support.Cli.Run(args, _dir.Path);

    private static readonly string[] Others = ["a", "b", "far", "sameclip"];

    private string[] ModelArgs() => Others.Select(m => _dir.File(m + ".safetensors")).ToArray();

    private static double At(JsonElement matrix, int i, int j) => matrix[i][j].GetDouble();

    [Fact]
    public void Distances_match_an_independent_float64_computation_and_the_far_model_is_farthest_from_the_base()
    {
        var result = Run(["distance", .. ModelArgs(), "--base", _dir.File("base.safetensors"), "-o", _dir.File("out"), "--json", "--threads", "2"]).EnsureSuccess();
        var json = result.Json();
        string[] names = ["base", .. Others];
        Assert.Equal(names, json.GetProperty("models").EnumerateArray().Select(e => e.GetString()).ToArray());
        Assert.Equal("base", json.GetProperty("base").GetString());
        Assert.Equal(JsonDocument.Parse(File.ReadAllText(_dir.File("out/distances.json"))).RootElement.ToString(), json.ToString());

        foreach (string component in Components)
        {
            var c = json.GetProperty("components").GetProperty(component);
            var l2 = c.GetProperty("l2");
            var cosine = c.GetProperty("cosine");
            for (int i = 0; i < names.Length; i++)
            {
                Assert.Equal(0.0, At(l2, i, i));
                for (int j = i + 1; j < names.Length; j++)
                {
                    var (refL2, refCos, keys) = Reference(_dir.File(names[i] + ".safetensors"), _dir.File(names[j] + ".safetensors"), Prefix(component));
                    AssertClose(refL2, At(l2, i, j), $"{component} L2 {names[i]}-{names[j]}");
                    Assert.Equal(At(l2, i, j), At(l2, j, i));
                    AssertClose(refCos, At(cosine, i, j), $"{component} cosine {names[i]}-{names[j]}");
                    Assert.Equal(keys, c.GetProperty("pair_keys")[i][j].GetInt32());
                }
            }
            // The model trained far away is the farthest from the base in every component but the one it shares.
            var toBase = Enumerable.Range(1, names.Length - 1).Select(i => At(l2, 0, i)).ToArray();
            Assert.Equal("far", names[1 + Array.IndexOf(toBase, toBase.Max())]);
        }

        var te0 = json.GetProperty("components").GetProperty("te0");
        Assert.Equal(0.0, At(te0.GetProperty("l2"), 0, 4));
        Assert.Equal([["base", "sameclip"]], te0.GetProperty("identical").EnumerateArray().Select(p => p.EnumerateArray().Select(e => e.GetString()).ToArray()).ToArray());
        // sameclip took b's UNET unchanged (f16 to f16), so that pair is identical there, and only there.
        Assert.Equal([["b", "sameclip"]], json.GetProperty("components").GetProperty("unet").GetProperty("identical").EnumerateArray().Select(p => p.EnumerateArray().Select(e => e.GetString()).ToArray()).ToArray());

        foreach (string component in Components)
        {
            PngSize(_dir.File($"out/{component}-heatmap.png"));
            PngSize(_dir.File($"out/{component}-mds.png"));
            PngSize(_dir.File($"out/{component}-to-base.png"));
            var csv = File.ReadAllLines(_dir.File($"out/{component}.csv"));
            Assert.Equal(1 + names.Length * (names.Length - 1) / 2, csv.Length);
            Assert.StartsWith("model_a,model_b,l2,cosine", csv[0]);
        }
    }

    [Fact]
    public void The_summary_names_a_component_identical_to_the_base()
    {
        var result = Run(["distance", .. ModelArgs(), "--base", _dir.File("base.safetensors"), "--component", "te0,unet"]).EnsureSuccess();
        Assert.Contains("te0: sameclip = base", result.Stdout);
        Assert.Contains("unet: b = sameclip", result.Stdout);
        Assert.DoesNotContain("unet: sameclip = base", result.Stdout);
        Assert.DoesNotContain("te1 (", result.Stdout);
    }

    [Fact]
    public void Blocks_follow_supermerger_naming_and_match_the_reference()
    {
        var json = Run(["distance", _dir.File("a.safetensors"), _dir.File("far.safetensors"), "--base", _dir.File("base.safetensors"), "--blocks", "-o", _dir.File("out"), "--json"]).Json();
        var blocks = json.GetProperty("blocks");
        Assert.Equal(20, blocks.EnumerateObject().Count()); // SDXL: BASE, IN00-IN08, M00, OUT00-OUT08
        var scopes = new Dictionary<string, Func<string, bool>>
        {
            ["IN00"] = k => k.StartsWith("model.diffusion_model.input_blocks.0.") || k.StartsWith("model.diffusion_model.time_embed."),
            ["IN04"] = k => k.StartsWith("model.diffusion_model.input_blocks.4."),
            ["M00"] = k => k.StartsWith("model.diffusion_model.middle_block."),
            ["OUT08"] = k => k.StartsWith("model.diffusion_model.output_blocks.8.") || k.StartsWith("model.diffusion_model.out."),
            ["BASE"] = k => !k.StartsWith("model.diffusion_model."),
        };
        foreach (var (block, scope) in scopes)
        {
            var (refL2, refCos, keys) = Reference(_dir.File("base.safetensors"), _dir.File("far.safetensors"), scope);
            var b = blocks.GetProperty(block);
            AssertClose(refL2, At(b.GetProperty("l2"), 0, 2), $"{block} L2");
            AssertClose(refCos, At(b.GetProperty("cosine"), 0, 2), $"{block} cosine");
            Assert.Equal(keys, b.GetProperty("keys").GetInt32());
        }
        Assert.Equal(0, blocks.GetProperty("IN05").GetProperty("keys").GetInt32());
        PngSize(_dir.File("out/blocks-to-base.png"));
    }

    [Fact]
    public void Missing_keys_shape_mismatches_and_non_finite_values_are_counted_not_fatal()
    {
        const string reshaped = "model.diffusion_model.middle_block.1.norm.weight";
        const string poisoned = "model.diffusion_model.time_embed.0.weight";
        Checkpoints.Write(_dir.File("pruned.safetensors"), 3, DType.F16, key => !key.StartsWith("first_stage_model."));
        WithReshaped(_dir.File("inpaint.safetensors"), 4, reshaped, [34]);
        Checkpoints.Write(_dir.File("nan.safetensors"), 5, DType.F16);
        CheckpointEdits.Patch(_dir.File("nan.safetensors"), poisoned, 6, BitConverter.GetBytes((ushort)0x7E00)); // one f16 NaN

        var json = Run("distance", _dir.File("pruned.safetensors"), _dir.File("inpaint.safetensors"), _dir.File("nan.safetensors"), "--base", _dir.File("base.safetensors"), "--json").Json();
        var c = json.GetProperty("components");
        Assert.Equal(["pruned"], c.GetProperty("vae").GetProperty("absent").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal(1, c.GetProperty("vae").GetProperty("one_sided")[0][1].GetInt32());
        Assert.True(c.GetProperty("vae").GetProperty("l2")[0][1].ValueKind == JsonValueKind.Null, "a pair that compared no key has no distance");

        var unet = c.GetProperty("unet");
        Assert.Equal(1, unet.GetProperty("shape_mismatches")[0][2].GetInt32());
        Assert.Equal(1, unet.GetProperty("nonfinite").GetProperty("nan").GetInt64());
        Assert.Equal(1, unet.GetProperty("nonfinite_keys")[0][3].GetInt32());
        Assert.Equal(0, unet.GetProperty("nonfinite_keys")[0][1].GetInt32());

        // The pair keeps every other key: its distance is the reference without the poisoned (and the reshaped) key.
        var (l2, cos, keys) = Reference(_dir.File("base.safetensors"), _dir.File("nan.safetensors"), Prefix("unet"), new HashSet<string> { poisoned });
        AssertClose(l2, At(unet.GetProperty("l2"), 0, 3), "L2 without the NaN key");
        AssertClose(cos, At(unet.GetProperty("cosine"), 0, 3), "cosine without the NaN key");
        Assert.Equal(keys, unet.GetProperty("pair_keys")[0][3].GetInt32());
        var (l2Inpaint, _, _) = Reference(_dir.File("base.safetensors"), _dir.File("inpaint.safetensors"), Prefix("unet"));
        AssertClose(l2Inpaint, At(unet.GetProperty("l2"), 0, 2), "L2 without the reshaped key");
    }


    [Fact]
    public void Bad_input_is_one_line_naming_the_file()
    {
        File.WriteAllBytes(_dir.File("model.ckpt"), [0x80, 0x02, 0x7D, 0x71, 0x00]);
        Run("distance", _dir.File("a.safetensors"), _dir.File("model.ckpt")).AssertOneLineError("model.ckpt", "pickle");

        File.WriteAllBytes(_dir.File("broken.safetensors"), [0x10, 0, 0, 0, 0, 0, 0, 0, (byte)'{', (byte)'"', (byte)'x']);
        Run("distance", _dir.File("a.safetensors"), _dir.File("broken.safetensors")).AssertOneLineError("broken.safetensors");

        Run("synth", "--arch", "sd15", "--seed", "1", "--scale", "0.02", "-o", _dir.File("sd15.safetensors")).EnsureSuccess();
        Run("distance", _dir.File("a.safetensors"), _dir.File("sd15.safetensors")).AssertOneLineError("sd15.safetensors", "architecture");

        Checkpoints.Write(_dir.File("novae1.safetensors"), 6, DType.F16, key => !key.StartsWith("first_stage_model."));
        Checkpoints.Write(_dir.File("novae2.safetensors"), 7, DType.F16, key => !key.StartsWith("first_stage_model."));
        Run("distance", _dir.File("novae1.safetensors"), _dir.File("novae2.safetensors"), "--component", "vae").AssertOneLineError("vae");

        Run("distance", _dir.File("a.safetensors"), _dir.File("b.safetensors"), "--component", "clip").AssertOneLineError("clip");
    }

    /// <summary>Reports and plots are written as a merge's output is: a temporary file, renamed over a link planted at the name.</summary>
    [Fact]
    public void Reports_and_plots_never_write_through_a_planted_symlink()
    {
        string dir = _dir.File("out");
        Directory.CreateDirectory(dir);
        File.WriteAllText(_dir.File("victim.txt"), "the victim's file");
        string[] planted = ["distances.json", "unet.csv", "unet-heatmap.png", "te0-mds.png"];
        foreach (string name in planted) File.CreateSymbolicLink(Path.Combine(dir, name), _dir.File("victim.txt"));

        Run(["distance", .. ModelArgs(), "--base", _dir.File("base.safetensors"), "-o", dir, "--threads", "1"]).EnsureSuccess();

        Assert.Equal("the victim's file", File.ReadAllText(_dir.File("victim.txt")));
        foreach (string name in planted) Assert.Null(new FileInfo(Path.Combine(dir, name)).LinkTarget);
        PngSize(Path.Combine(dir, "unet-heatmap.png"));
        JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "distances.json")));
        Assert.Empty(Directory.GetFiles(dir, ".*"));
    }
}
