using System.Security.Cryptography;
using MergeCluster.Merge.Tests.Support;

namespace MergeCluster.Merge.Tests.Cli;

public class SynthCommandTests
{
    [Fact]
    public void Synth_is_deterministic_and_reports_what_it_wrote()
    {
        using var dir = new TempDirectory();
        string a = dir.File("a.safetensors"), b = dir.File("b.safetensors");
        var first = Support.Cli.Run("synth", "--arch", "sd15", "--seed", "12", "--scale", "0.05", "-o", a).EnsureSuccess();
        Support.Cli.Run("synth", "--arch", "sd15", "--seed", "12", "--scale", "0.05", "-o", b).EnsureSuccess();
        Assert.Equal(SHA256.HashData(File.ReadAllBytes(a)), SHA256.HashData(File.ReadAllBytes(b)));
        Assert.Contains("sd15, 1131 tensors", first.Stdout);
        Assert.Equal([a, b], Directory.GetFiles(dir.Path).Order());
    }

    [Theory]
    [InlineData("f32", "F32")]
    [InlineData("bf16", "BF16")]
    public void Dtype_sets_every_float_tensor(string option, string dtype)
    {
        using var dir = new TempDirectory();
        string path = dir.File("m.safetensors");
        Support.Cli.Run("synth", "--arch", "sdxl", "--seed", "1", "--scale", "0.02", "--dtype", option, "-o", path).EnsureSuccess();
        var raw = RawSafetensors.Read(path);
        Assert.Equal(new[] { "I64", dtype }.Order(), raw.Tensors.Select(t => t.DType).Distinct().Order());
        var json = Support.Cli.Run("inspect", "--json", path).Json();
        Assert.Equal(1680, json.GetProperty("components").GetProperty("unet").GetProperty("dtypes").GetProperty(dtype).GetInt32());
    }

    [Fact]
    public void Bad_options_fail_with_one_line_and_leave_the_target_untouched()
    {
        using var dir = new TempDirectory();
        string target = dir.File("keep.safetensors");
        File.WriteAllText(target, "previous contents");
        Support.Cli.Run("synth", "--arch", "sdxl", "--seed", "1", "--scale", "0.05", "--drop-prefix", "cond_stage_model.", "-o", target)
            .AssertOneLineError("cond_stage_model.");
        Support.Cli.Run("synth", "--arch", "sdxl", "--seed", "1", "--scale", "0", "-o", target).AssertOneLineError("scale");
        Support.Cli.Run("synth", "--arch", "sdxl", "--seed", "1", "-o", dir.File("x.ckpt")).AssertOneLineError("x.ckpt");
        Assert.Equal("previous contents", File.ReadAllText(target));
        Assert.Equal([target], Directory.GetFiles(dir.Path));

        var unknownArch = Support.Cli.Run("synth", "--arch", "sd3", "--seed", "1", "-o", target);
        Assert.NotEqual(0, unknownArch.ExitCode);
        Assert.Contains("sd3", unknownArch.Stderr);
        Assert.DoesNotContain("   at ", unknownArch.Stderr + unknownArch.Stdout);
    }
}
