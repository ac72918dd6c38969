using MergeCluster.Merge.Tests.Merging;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Cli;

/// <summary>`mergecluster merge` as users run it: a real process on real files.</summary>
public class MergeCommandTests : IDisposable
{
    private readonly TempDirectory _dir = new();
    private readonly Dictionary<string, string?> _env;

    public MergeCommandTests()
    {
        // Each test gets its own hash cache, so a replay test sees the files as they are now.
        _env = new() { ["MERGECLUSTER_CACHE"] = _dir.File("cache") };
        Checkpoints.Write(_dir.File("base.safetensors"), 100, DType.F16);
        Checkpoints.Write(_dir.File("a.safetensors"), 1, DType.F16);
        Checkpoints.Write(_dir.File("b.safetensors"), 2, DType.BF16, key => !key.StartsWith("first_stage_model."));
    }

    public void Dispose() => _dir.Dispose();

    private string Recipe(string body)
    {
        string path = _dir.File("recipe.yaml");
        File.WriteAllText(path, "models:\n  base: base.safetensors\n  a: a.safetensors\n  b: b.safetensors\nbase: base\n" + body);
        return path;
    }

    private CliResult Run(params string[] args) => Support.Cli.Run(args, _dir.Path, _env);

    [Fact]
    public void Merge_writes_the_output_with_replayable_metadata_and_replay_is_bit_identical()
    {
        string recipe = Recipe("components:\n  unet: { method: mean, models: [a, b] }\n  te0: { method: weighted_sum, models: [a, b], alpha: 0.25 }\noutput: { path: out.safetensors, dtype: bf16 }\n");
        Run("merge", recipe, "--threads", "2").EnsureSuccess();
        using (var merged = SafetensorsFile.Open(_dir.File("out.safetensors")))
        {
            Assert.Equal(File.ReadAllText(recipe), merged.Header.Metadata["mergecluster.recipe"]);
            Assert.Contains("\"a\":", merged.Header.Metadata["mergecluster.inputs"]);
            Assert.All(merged.Tensors.Where(t => t.DType.IsFloat()), t => Assert.Equal(DType.BF16, t.DType));
        }

        var inspect = Run("inspect", _dir.File("out.safetensors"), "--json").Json();
        Assert.Contains("mergecluster.recipe", inspect.GetProperty("metadata").EnumerateObject().Select(p => p.Name));

        Run("merge", "--from-metadata", _dir.File("out.safetensors"), "-o", _dir.File("again.safetensors"), "--threads", "1").EnsureSuccess();
        Assert.Equal(File.ReadAllBytes(_dir.File("out.safetensors")), File.ReadAllBytes(_dir.File("again.safetensors")));
    }

    [Fact]
    public void Replay_names_an_input_whose_hash_changed()
    {
        Run("merge", Recipe("components:\n  all: { method: mean, models: [a, b] }\noutput: out.safetensors\n")).EnsureSuccess();
        Checkpoints.Write(_dir.File("a.safetensors"), 77, DType.F16);
        var r = Run("merge", "--from-metadata", _dir.File("out.safetensors"), "-o", _dir.File("again.safetensors"));
        r.AssertOneLineError("out.safetensors", "a (", "a.safetensors");
        Assert.False(File.Exists(_dir.File("again.safetensors")));
    }

    [Fact]
    public void Dry_run_prints_the_plan_and_writes_nothing()
    {
        var r = Run("merge", Recipe("components:\n  unet: { method: mean, models: [a, b] }\n  vae: { method: mean, models: [a, b] }\noutput: out.safetensors\n"), "--dry-run").EnsureSuccess();
        Assert.Contains("unet", r.Stdout);
        Assert.Contains("mean", r.Stdout);
        Assert.Contains("b: 1 vae keys filled from base 'base'", r.Stdout);
        Assert.Contains("out.safetensors", r.Stdout);
        Assert.False(File.Exists(_dir.File("out.safetensors")));
    }

    [Fact]
    public void Recipe_mistakes_are_one_line_with_the_yaml_line()
    {
        var r = Run("merge", Recipe("components:\n  unet: { method: mean, models: [a, nobody] }\noutput: out.safetensors\n"));
        r.AssertOneLineError("recipe.yaml:7:", "unknown model 'nobody'");
    }

    [Fact]
    public void A_corrupt_input_is_reported_before_any_work_and_the_existing_output_survives()
    {
        File.WriteAllText(_dir.File("out.safetensors"), "the previous merge");
        // A download cut short: the header promises more data than the file holds.
        using (var f = new FileStream(_dir.File("b.safetensors"), FileMode.Open)) f.SetLength(f.Length - 10);
        var r = Run("merge", Recipe("components:\n  all: { method: mean, models: [a, b] }\noutput: out.safetensors\n"));
        r.AssertOneLineError("b.safetensors");
        Assert.Equal("the previous merge", File.ReadAllText(_dir.File("out.safetensors")));
        Assert.Empty(Directory.GetFiles(_dir.Path, "*.tmp"));
    }

    [Fact]
    public void A_pickle_model_is_refused_without_being_read()
    {
        File.WriteAllBytes(_dir.File("evil.ckpt"), [0x80, 0x02, 0x63, 0x6f, 0x73]);
        File.WriteAllText(_dir.File("recipe.yaml"), "models:\n  a: a.safetensors\n  evil: evil.ckpt\ncomponents:\n  all: { method: mean, models: [a, evil] }\noutput: out.safetensors\n");
        var r = Run("merge", _dir.File("recipe.yaml"));
        r.AssertOneLineError("evil.ckpt", "pickle");
    }

    [Fact]
    public void A_shape_mismatch_names_the_key_and_the_models()
    {
        var tensors = Checkpoints.SdxlLike(DType.F16).Select(t => t.Key == "model.diffusion_model.input_blocks.0.0.weight" ? t with { Shape = [32, 9, 3, 3] } : t).ToList();
        Checkpoints.Write(_dir.File("b.safetensors"), 2, DType.F16, tensors: tensors);
        var r = Run("merge", Recipe("components:\n  all: { method: mean, models: [a, b] }\noutput: out.safetensors\n"));
        r.AssertOneLineError("model.diffusion_model.input_blocks.0.0.weight", "'a'", "'b'");
    }

    [Fact]
    public void Non_finite_values_in_the_output_are_named_or_refused_as_asked()
    {
        const string key = "model.diffusion_model.input_blocks.0.0.weight";
        CheckpointEdits.Patch(_dir.File("a.safetensors"), key, 2, [0x00, 0x7C]); // +Inf in F16
        string recipe = Recipe("components:\n  all: { method: mean, models: [a, b] }\noutput: out.safetensors\n");
        var warned = Run("merge", recipe, "--no-hash").EnsureSuccess();
        Assert.Equal([$"warning: {_dir.File("out.safetensors")}: tensor '{key}' has NaN or infinite values: model 'a' holds such values there"], warned.StderrLines);

        File.WriteAllText(_dir.File("out.safetensors"), "the previous merge");
        Run("merge", recipe, "--no-hash", "--nonfinite", "error").AssertOneLineError(key, "model 'a'", "writes nothing");
        Assert.Equal("the previous merge", File.ReadAllText(_dir.File("out.safetensors")));
        Assert.Empty(Run("merge", recipe, "--no-hash", "--nonfinite", "keep").EnsureSuccess().Stderr);
    }
}
