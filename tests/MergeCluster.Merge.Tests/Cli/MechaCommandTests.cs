using MergeCluster.Merge.Tests.Merging;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Cli;

/// <summary>`merge recipe.mecha` and `recipe export --mecha` as users run them, and method merges under every SIMD setting.</summary>
public class MechaCommandTests : IDisposable
{
    private readonly TempDirectory _dir = new();
    private readonly Dictionary<string, string?> _env;

    public MechaCommandTests()
    {
        _env = new() { ["MERGECLUSTER_CACHE"] = _dir.File("cache") };
        Checkpoints.Write(_dir.File("base.safetensors"), 100, DType.F16, tensors: NonLinearMethodsTests.Tensors(DType.F16));
        Checkpoints.Write(_dir.File("a.safetensors"), 1, DType.F16, tensors: NonLinearMethodsTests.Tensors(DType.F16));
        Checkpoints.Write(_dir.File("b.safetensors"), 2, DType.BF16, tensors: NonLinearMethodsTests.Tensors(DType.BF16));
    }

    public void Dispose() => _dir.Dispose();

    private CliResult Run(IReadOnlyList<string> args, IReadOnlyDictionary<string, string?>? env = null)
    {
        var all = new Dictionary<string, string?>(_env);
        foreach (var (k, v) in env ?? new Dictionary<string, string?>()) all[k] = v;
        return Support.Cli.Run(args, _dir.Path, all);
    }

    private const string Yaml = "models:\n  base: base.safetensors\n  a: a.safetensors\n  b: b.safetensors\nbase: base\ncomponents:\n" +
        "  unet: { method: ties, models: [a, b], k: 0.5 }\n  te0: { method: geometric_median, models: [a, b, base] }\n  vae: { method: slerp, models: [a, b], alpha: 0.4 }\n" +
        "output: { path: out.safetensors, dtype: f16 }\n";

    [Fact]
    public void Export_then_merge_the_mecha_file()
    {
        File.WriteAllText(_dir.File("r.yaml"), Yaml);
        var stdout = Run(["recipe", "export", "r.yaml", "--mecha"]).EnsureSuccess().Stdout;
        Assert.StartsWith("version 0.1.0\n", stdout);
        Assert.False(stdout.EndsWith('\n'), "sd-mecha's parser fails on a trailing empty line");
        Assert.Contains("merge \"ties_sum\"", stdout);

        Run(["recipe", "export", "r.yaml", "--mecha", "-o", _dir.File("r.mecha")]).EnsureSuccess();
        Assert.Equal(stdout, File.ReadAllText(_dir.File("r.mecha")));
        Run(["merge", "r.mecha", "-o", "from-mecha.safetensors", "--dtype", "f32", "--no-hash"]).EnsureSuccess();
        Run(["merge", "r.yaml", "-o", "from-yaml.safetensors", "--dtype", "f32", "--no-hash"]).EnsureSuccess();
        using var m = SafetensorsFile.Open(_dir.File("from-mecha.safetensors"));
        Assert.All(m.Tensors.Where(t => t.DType.IsFloat()), t => Assert.Equal(DType.F32, t.DType));
        foreach (var t in m.Tensors.Where(t => t.DType.IsFloat()))
        {
            var x = Checkpoints.Values(_dir.File("from-mecha.safetensors"), t.Key);
            var y = Checkpoints.Values(_dir.File("from-yaml.safetensors"), t.Key);
            for (int e = 0; e < x.Length; e++) Assert.True(Math.Abs(x[e] - y[e]) <= 1e-6 * Math.Abs(y[e]) + 1e-12, $"{t.Key}[{e}]: {x[e]} vs {y[e]}");
        }
    }

    [Fact]
    public void A_mecha_recipe_needs_an_output_path()
    {
        File.WriteAllText(_dir.File("r.mecha"), "version 0.1.0\nmodel \"a.safetensors\" model_config=\"sdxl-sgm\" merge_space=\"weight\"");
        string line = Run(["merge", "r.mecha"]).SingleErrorLine();
        Assert.Contains("r.mecha", line);
        Assert.Contains("-o", line);
    }

    [Fact]
    public void An_unsupported_method_is_one_line_naming_the_file_line_and_word()
    {
        File.WriteAllText(_dir.File("r.mecha"), "version 0.1.0\nmodel \"a.safetensors\" model_config=\"sdxl-sgm\" merge_space=\"weight\"\nmodel \"b.safetensors\" model_config=\"sdxl-sgm\" merge_space=\"weight\"\nmerge \"crossover\" &0 &1");
        string line = Run(["merge", "r.mecha", "-o", "out.safetensors"]).SingleErrorLine();
        Assert.Contains("r.mecha:4", line);
        Assert.Contains("'crossover'", line);
        Assert.False(File.Exists(_dir.File("out.safetensors")));
    }

    [Fact]
    public void A_dtype_chosen_on_the_command_line_is_replayed()
    {
        File.WriteAllText(_dir.File("r.mecha"), "version 0.1.0\nmodel \"a.safetensors\" model_config=\"sdxl-sgm\" merge_space=\"weight\"\nmodel \"b.safetensors\" model_config=\"sdxl-sgm\" merge_space=\"weight\"\nmerge \"slerp\" &0 &1 0.25");
        Run(["merge", "r.mecha", "-o", "out.safetensors", "--dtype", "bf16"]).EnsureSuccess();
        Run(["merge", "--from-metadata", "out.safetensors", "-o", "again.safetensors"]).EnsureSuccess();
        Assert.Equal(File.ReadAllBytes(_dir.File("out.safetensors")), File.ReadAllBytes(_dir.File("again.safetensors")));
    }

    /// <summary>
    /// The statistics sums have a fixed lane order, so the bits do not depend on the machine's SIMD width: the same
    /// merge with AVX-512 off and with every hardware intrinsic off (scalar code) writes the same file.
    /// </summary>
    [Fact]
    public void Method_merges_are_the_same_bytes_without_avx512_and_without_simd()
    {
        File.WriteAllText(_dir.File("r.yaml"), Yaml.Replace("  vae: { method: slerp, models: [a, b], alpha: 0.4 }\n", "  vae: { method: slerp, models: [a, b], alpha: 0.4 }\n  te1: { method: model_stock, models: [a, b] }\n  other: { method: dare, models: [a, b], probability: 0.3 }\n"));
        byte[]? reference = null;
        foreach (var env in new Dictionary<string, string?>[] { new(), new() { ["DOTNET_EnableAVX512F"] = "0" }, new() { ["DOTNET_EnableHWIntrinsic"] = "0" } })
        {
            string output = $"out-{reference?.Length ?? 0}-{env.Count}-{Guid.NewGuid():N}.safetensors";
            Run(["merge", "r.yaml", "-o", output, "--no-hash", "--threads", "2"], env).EnsureSuccess();
            var bytes = File.ReadAllBytes(_dir.File(output));
            if (reference is null) reference = bytes;
            else Assert.True(reference.AsSpan().SequenceEqual(bytes), $"output differs with {string.Join(",", env.Keys)}");
        }
    }
}
