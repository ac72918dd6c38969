using MergeCluster.Merge.Tests.Support;
using MergeCluster.Planning;
using MergeCluster.Merge.Recipes;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Merging;

public class RecipeTests
{
    private const string IssueExample = """
        models:                 # name -> checkpoint path, relative to the recipe file
          base: sd_xl_base_1.0.safetensors
          x01: x01.safetensors
          x02: x02.safetensors
          x05: x05.safetensors
        base: base
        components:
          unet: { method: mean, models: [x01, x02, x05] }
          te0:  { method: mean, models: [x02, x05] }
          te1:  { method: weighted_sum, models: [x01, x02], alpha: 0.3 }
          vae:  { method: copy, model: base }
        output: { path: x39a.safetensors, dtype: f16 }
        """;

    [Fact]
    public void The_documented_example_parses()
    {
        var r = Recipe.Parse(IssueExample, "/data", "r.yaml");
        Assert.Equal(["base", "x01", "x02", "x05"], r.Models.Select(m => m.Name));
        Assert.Equal("base", r.Base);
        Assert.Equal(MissingPolicy.Base, r.Missing);
        Assert.Equal(MergeMethod.Mean, r.Components["unet"].Method);
        Assert.Equal(["x02", "x05"], r.Components["te0"].Models.ToArray());
        Assert.Equal(0.3, r.Components["te1"].Alpha);
        Assert.Equal(MergeMethod.Copy, r.Components["vae"].Method);
        Assert.Equal(DType.F16, r.Output.DType);
        Assert.Equal("/data/x39a.safetensors", r.OutputPath);
        Assert.Equal("/data/x01.safetensors", r.ModelPath(1));
    }

    [Theory]
    [InlineData("unet: { method: mean, models: [x01, x99] }", 8, "unknown model 'x99'")]
    [InlineData("unet: { method: average_of_sorts, models: [x01] }", 8, "unknown method 'average_of_sorts'")]
    [InlineData("unet: { method: mean, models: [] }", 8, "empty model list")]
    [InlineData("unte: { method: mean, models: [x01] }", 8, "unknown component 'unte'")]
    [InlineData("te1: { method: weighted_sum, models: [x01, x02, x05], alpha: 0.3 }", 8, "exactly 2 models")]
    [InlineData("te1: { method: weighted_sum, models: [x01, x02] }", 8, "needs alpha")]
    [InlineData("unet: { method: mean, models: [x01, x02], weights: [1] }", 8, "1 weights for 2 models")]
    [InlineData("unet: { method: weighted_sum, models: [x01, x02], alpha: 0.5, alphas: { IN42: 1 } }", 8, "unknown block 'IN42'")]
    public void Rule_mistakes_name_the_line(string rule, int line, string message)
    {
        string text = IssueExample;
        if (rule.StartsWith("te1")) text = text.Replace("  te1:  { method: weighted_sum, models: [x01, x02], alpha: 0.3 }\n", "");
        text = text.Replace("unet: { method: mean, models: [x01, x02, x05] }", rule);
        var e = Assert.Throws<MergeException>(() => Recipe.Parse(text, "/data", "r.yaml"));
        Assert.StartsWith($"r.yaml:{line}:", e.Message);
        Assert.Contains(message, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void Unknown_output_dtype_names_the_line()
    {
        var e = Assert.Throws<MergeException>(() => Recipe.Parse(IssueExample.Replace("dtype: f16", "dtype: f12"), "/data", "r.yaml"));
        Assert.StartsWith("r.yaml:12:", e.Message);
        Assert.Contains("unknown output dtype 'f12'", e.Message);
    }

    [Fact]
    public void Invalid_yaml_names_the_line()
    {
        var e = Assert.Throws<MergeException>(() => Recipe.Parse("models:\n  a: a.safetensors\ncomponents: [\n", "/data", "r.yaml"));
        Assert.StartsWith("r.yaml:", e.Message);
        Assert.Contains("invalid YAML", e.Message);
    }

    [Fact]
    public void A_missing_model_file_is_reported_with_its_recipe_line_before_any_work()
    {
        using var dir = new TempDirectory();
        Checkpoints.Write(dir.File("x01.safetensors"), 1, DType.F16);
        var recipe = Recipe.Parse("models:\n  x01: x01.safetensors\n  x02: nowhere.safetensors\ncomponents:\n  all: { method: mean, models: [x01, x02] }\noutput: out.safetensors\n", dir.Path, "r.yaml");
        var e = Assert.Throws<MergeException>(() => Planner.Create(recipe));
        Assert.StartsWith("r.yaml:3:", e.Message);
        Assert.Contains("nowhere.safetensors", e.Message);
        Assert.Contains("not found", e.Message);
    }

    [Fact]
    public void A_corrupt_model_is_reported_at_planning_with_its_file()
    {
        using var dir = new TempDirectory();
        Checkpoints.Write(dir.File("x01.safetensors"), 1, DType.F16);
        File.WriteAllBytes(dir.File("x02.safetensors"), [16, 0, 0, 0, 0, 0, 0, 0, (byte)'{', (byte)'"', (byte)'a']);
        var recipe = Recipe.Parse("models:\n  x01: x01.safetensors\n  x02: x02.safetensors\ncomponents:\n  all: { method: mean, models: [x01, x02] }\noutput: out.safetensors\n", dir.Path, "r.yaml");
        var e = Assert.Throws<SafetensorsException>(() => Planner.Create(recipe));
        Assert.Contains("x02.safetensors", e.Message);
    }

    [Fact]
    public void A_pickle_model_is_refused()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("x01.ckpt"), [0x80, 0x02, 0x7d]);
        var recipe = Recipe.Parse("models:\n  x01: x01.ckpt\ncomponents:\n  all: { method: copy, model: x01 }\noutput: out.safetensors\n", dir.Path, "r.yaml");
        var e = Assert.Throws<SafetensorsException>(() => Planner.Create(recipe));
        Assert.Equal(SafetensorsError.PickleRefused, e.Error);
        Assert.Contains("x01.ckpt", e.Message);
    }

    private const string Small = "models:\n  a: a.safetensors\ncomponents:\n  all: { method: copy, model: a }\noutput: out.safetensors\n";

    [Theory]
    [InlineData("deep", "r.yaml:1:", "nests deeper than 32 levels")]
    [InlineData("deep-block", "r.yaml:", "nests deeper than 32 levels")]
    [InlineData("second document", "r.yaml:6:", "second YAML document")]
    [InlineData("anchor", "r.yaml:2:", "anchors")]
    [InlineData("alias", "r.yaml:4:", "aliases")]
    [InlineData("duplicate key", "r.yaml:3:", "'a' is given twice")]
    [InlineData("unknown reduce field", "r.yaml:6:", "unknown reduce field 'groop'")]
    [InlineData("nul in output", "r.yaml:5:", "NUL")]
    public void Hostile_yaml_is_one_line_with_its_line(string what, string at, string message)
    {
        string text = what switch
        {
            "deep" => new string('[', 60_000),
            "deep-block" => string.Concat(Enumerable.Range(0, 40).Select(i => new string(' ', i) + $"k{i}:\n")) + new string(' ', 40) + "x",
            "second document" => Small + "---\nmodels: {}\n",
            "anchor" => Small.Replace("a: a.safetensors", "a: &p a.safetensors"),
            "alias" => Small.Replace("model: a }", "model: *p }"),
            "duplicate key" => Small.Replace("a: a.safetensors\n", "a: a.safetensors\n  a: b.safetensors\n"),
            "unknown reduce field" => Small + "reduce: { groop: 3 }\n",
            _ => Small.Replace("output: out.safetensors", "output: \"out\\0.safetensors\""),
        };
        var e = Assert.Throws<MergeException>(() => Recipe.Parse(text, "/data", "r.yaml"));
        Assert.StartsWith(at, e.Message);
        Assert.Contains(message, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void A_recipe_over_a_megabyte_is_refused_before_it_is_parsed()
    {
        var e = Assert.Throws<MergeException>(() => Recipe.Parse(Small + "# " + new string('x', 1 << 20) + "\n", "/data", "r.yaml"));
        Assert.Contains("over the 1,048,576 limit", e.Message);
    }

    [Fact]
    public void Any_reduction_group_size_plans_without_overflow_and_equals_one_group()
    {
        using var dir = new TempDirectory();
        Checkpoints.Write(dir.File("a.safetensors"), 1, DType.F16);
        Checkpoints.Write(dir.File("b.safetensors"), 2, DType.F16);
        string text = "models:\n  a: a.safetensors\n  b: b.safetensors\ncomponents:\n  all: { method: mean, models: [a, b] }\noutput: out.safetensors\nreduce: { group: 2147483647 }\n";
        var plan = Planner.Create(Recipe.Parse(text, dir.Path, "r.yaml"));
        Assert.Equal(1, plan.GroupCount);
        Assert.All(plan.Tensors.SelectMany(t => t.Terms), term => Assert.Equal(0, term.Group));
    }
}
