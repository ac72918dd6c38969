using MergeCluster.Engine.Execution;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Recipes;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Merging;

/// <summary>sd-mecha's .mecha recipes, read and merged, and YAML recipes written as .mecha.</summary>
public class MechaFormatTests : IDisposable
{
    private const string Unet = "model.diffusion_model.input_blocks.0.0.weight";
    private const string Big = "model.diffusion_model.input_blocks.4.1.proj_in.weight";
    private const string Te0 = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight";
    private const string Te1 = "conditioner.embedders.1.model.text_projection";
    private const string Vae = "first_stage_model.decoder.conv_in.weight";
    private const string PositionIds = "conditioner.embedders.0.transformer.text_model.embeddings.position_ids";
    private readonly TempDirectory _dir = new();

    public MechaFormatTests()
    {
        var tensors = NonLinearMethodsTests.Tensors(DType.F16);
        Checkpoints.Write(_dir.File("base.safetensors"), 100, DType.F16, tensors: tensors);
        Checkpoints.Write(_dir.File("a.safetensors"), 1, DType.F16, tensors: tensors);
        Checkpoints.Write(_dir.File("b.safetensors"), 2, DType.BF16, tensors: NonLinearMethodsTests.Tensors(DType.BF16));
        Checkpoints.Write(_dir.File("c.safetensors"), 3, DType.F32, tensors: NonLinearMethodsTests.Tensors(DType.F32));
    }

    public void Dispose() => _dir.Dispose();

    private double[] V(string model, string key) => Checkpoints.Values(_dir.File($"{model}.safetensors"), key);

    private async Task<string> MergeMecha(string text, string dtype = "f64")
    {
        File.WriteAllText(_dir.File("recipe.mecha"), text);
        var recipe = Recipe.Load(_dir.File("recipe.mecha"));
        DTypes.TryParseUser(dtype, out var d);
        return await LocalMerge.RunAsync(recipe, new LocalMergeOptions { Threads = 2, HashInputs = false, OutputPath = _dir.File($"out-{Guid.NewGuid():N}.safetensors"), DType = d }, null, CancellationToken.None);
    }

    private static void AssertClose(double[] expected, double[] actual, double tolerance = 1e-13)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = expected.Max(Math.Abs);
        for (int e = 0; e < actual.Length; e++)
            Assert.True(Math.Abs(expected[e] - actual[e]) <= tolerance * scale, $"[{e}] expected {expected[e]:R}, got {actual[e]:R}");
    }

    /// <summary>As sd-mecha 1.1.5's serialize writes pick_component(n_average(a, b, c), "diffuser") | pick_component(geometric_median(a, b, c), "clip_l") | slerp(a, b, alpha=0.3).</summary>
    private const string SplitRecipe = """
        version 0.1.0
        model "a.safetensors" model_config="sdxl-sgm" merge_space="weight"
        model "b.safetensors" model_config="sdxl-sgm" merge_space="weight"
        model "c.safetensors" model_config="sdxl-sgm" merge_space="weight"
        merge "n_average" &0 &1 &2
        dict key="diffuser"
        literal &4 model_config="singleton-mecha" merge_space="param"
        merge "convert_singleton" &5
        merge "pick_component" &3 &6
        dict key=1e-06
        literal &8 model_config="singleton-mecha" merge_space="param"
        merge "convert_singleton" &9
        dict key=100
        literal &11 model_config="singleton-mecha" merge_space="param"
        merge "convert_singleton" &12
        dict key=1e-20
        literal &14 model_config="singleton-mecha" merge_space="param"
        merge "convert_singleton" &15
        merge "geometric_median" &0 &1 &2 eps=&10 maxiter=&13 ftol=&16
        dict key="clip_l"
        literal &18 model_config="singleton-mecha" merge_space="param"
        merge "convert_singleton" &19
        merge "pick_component" &17 &20
        merge "fallback" &7 &21
        dict key=0.3
        literal &23 model_config="singleton-mecha" merge_space="param"
        merge "convert_singleton" &24
        merge "slerp" &0 &1 &25
        merge "fallback" &22 &26
        """;

    [Fact]
    public async Task A_recipe_as_sd_mecha_writes_it_merges_component_by_component()
    {
        string output = await MergeMecha(SplitRecipe);
        AssertClose(new[] { "a", "b", "c" }.Select(m => V(m, Big)).Aggregate((x, y) => x.Zip(y, (p, q) => p + q).ToArray()).Select(v => v / 3).ToArray(), Checkpoints.Values(output, Big));
        AssertClose(MethodReference.GeometricMedian(new[] { "a", "b", "c" }.Select(m => V(m, Te0)).ToArray()), Checkpoints.Values(output, Te0), 1e-7);
        AssertClose(MethodReference.Slerp(V("a", Te1), V("b", Te1), 0.3), Checkpoints.Values(output, Te1));
        AssertClose(MethodReference.Slerp(V("a", Vae), V("b", Vae), 0.3), Checkpoints.Values(output, Vae));
        // Integer buffers are kept as integers, never averaged.
        Assert.Equal(Checkpoints.RawBytes(_dir.File("a.safetensors"), PositionIds), Checkpoints.RawBytes(output, PositionIds));
    }

    [Fact]
    public async Task Plain_constants_comments_absolute_paths_and_keyword_parameters()
    {
        string text = $"""
            version 0.1.0
            # a hand-written recipe
            model "{_dir.File("base.safetensors")}" model_config="sdxl-sgm" merge_space="weight"
            model "a.safetensors" model_config="sdxl-sgm" merge_space="weight"
            merge "subtract" &1 &0
            merge "add_difference" &0 &2 0.5
            model "c.safetensors" model_config="sdxl-sgm" merge_space="weight"
            merge "weighted_sum" &3 &4 alpha=0.25
            """;
        string output = await MergeMecha(text);
        double[] a = V("a", Big), c = V("c", Big);
        var expected = V("base", Big).Select((x, e) => 0.75 * (x + 0.5 * (a[e] - x)) + 0.25 * c[e]).ToArray();
        AssertClose(expected, Checkpoints.Values(output, Big));
    }

    [Fact]
    public async Task Ties_model_stock_and_dare_as_sd_mecha_defines_them()
    {
        const string head = """
            version 0.1.0
            model "base.safetensors" model_config="sdxl-sgm" merge_space="weight"
            model "a.safetensors" model_config="sdxl-sgm" merge_space="weight"
            merge "subtract" &1 &0
            model "b.safetensors" model_config="sdxl-sgm" merge_space="weight"
            merge "subtract" &3 &0
            model "c.safetensors" model_config="sdxl-sgm" merge_space="weight"
            merge "subtract" &5 &0

            """;
        var deltas = new[] { "a", "b", "c" }.Select(m => MethodReference.Subtract(V(m, Big), V("base", Big))).ToArray();

        // ties_sum_extended with apply_stock false (its default) scales by model stock's t, as sd-mecha 1.1.5 computes it.
        string extended = await MergeMecha(head + "merge \"ties_sum_extended\" &2 &4 &6 k=0.3\nmerge \"add_difference\" &0 &7 1.0");
        AssertClose(MethodReference.AddDifference(V("base", Big), MethodReference.TiesSum(deltas, 0.3, stock: true, row: 500), 1.0), Checkpoints.Values(extended, Big));
        string plain = await MergeMecha(head + "merge \"ties_sum_extended\" &2 &4 &6 k=0.3 apply_stock=true\nmerge \"add_difference\" &0 &7 1.0");
        AssertClose(MethodReference.AddDifference(V("base", Big), MethodReference.TiesSum(deltas, 0.3), 1.0), Checkpoints.Values(plain, Big));

        string stock = await MergeMecha(head + "merge \"model_stock\" &2 &4 &6\nmerge \"add_difference\" &0 &7 1.0");
        AssertClose(MethodReference.AddDifference(V("base", Big), MethodReference.ModelStock(deltas, 500), 1.0), Checkpoints.Values(stock, Big));

        string dare = await MergeMecha(head + "merge \"ties_sum_with_dropout\" &2 &4 &6 probability=0.25 k=1.0 apply_stock=true seed=4\nmerge \"add_difference\" &0 &7 1.0");
        var dropped = deltas.Select((d, i) => MethodReference.Drop(d, Big, 4, i, 0.25)).ToArray();
        AssertClose(MethodReference.AddDifference(V("base", Big), MethodReference.TiesSum(dropped, 1.0).Select(v => v / 0.75).ToArray(), 1.0), Checkpoints.Values(dare, Big));
    }

    [Fact]
    public async Task Keys_outside_the_model_config_are_dropped_as_sd_mecha_does()
    {
        var tensors = NonLinearMethodsTests.Tensors(DType.F16).Append(new Checkpoints.Tensor("extra.not_sdxl.weight", DType.F16, [3])).ToList();
        Checkpoints.Write(_dir.File("a.safetensors"), 1, DType.F16, tensors: tensors);
        string output = await MergeMecha("version 0.1.0\nmodel \"a.safetensors\" model_config=\"sdxl-sgm\" merge_space=\"weight\"\nmodel \"c.safetensors\" model_config=\"sdxl-sgm\" merge_space=\"weight\"\nmerge \"n_average\" &0 &1\n");
        using var file = SafetensorsFile.Open(output);
        Assert.DoesNotContain(file.Tensors, t => t.Key == "extra.not_sdxl.weight");
        Assert.Contains(file.Tensors, t => t.Key == Unet);
    }

    [Fact]
    public void An_sd1_recipe_uses_the_sd1_ldm_config()
    {
        File.WriteAllText(_dir.File("sd1.mecha"), "version 0.1.0\nmodel \"a.safetensors\" model_config=\"sd1-ldm\" merge_space=\"weight\"\nmodel \"b.safetensors\" model_config=\"sd1-ldm\" merge_space=\"weight\"\ndict key=\"clip_l\"\nliteral &2 model_config=\"singleton-mecha\" merge_space=\"param\"\nmerge \"convert_singleton\" &3\nmerge \"pick_component\" &0 &4\nmerge \"fallback\" &5 &1");
        var recipe = Recipe.Load(_dir.File("sd1.mecha"));
        Assert.Equal(RecipeFormat.Mecha, recipe.Format);
        Assert.Same(ModelArchitecture.Sd15, recipe.ModelConfig);
        Assert.Equal(2, recipe.Models.Length);
    }

    [Theory]
    [InlineData("merge \"rotate\" &0 &1", 4, "'rotate'", "unsupported merge method")]
    [InlineData("model \"c.safetensors\" model_config=\"sd3-comfyui\" merge_space=\"weight\"", 4, "sd3-comfyui", "model_config")]
    [InlineData("merge \"n_average\" &0 &7", 4, "'&7'", "out of bounds")]
    [InlineData("merge \"ties_sum\" &0 &1", 4, "'ties_sum'", "deltas")]
    [InlineData("merge \"subtract\" &0 &1\nmerge \"ties_sum_with_dropout\" &2 della_eps=0.1", 5, "della_eps", "DELLA")]
    [InlineData("dict key=\"unet\"\nliteral &2 model_config=\"singleton-mecha\" merge_space=\"param\"\nmerge \"convert_singleton\" &3\nmerge \"pick_component\" &0 &4", 7, "'unet'", "diffuser")]
    [InlineData("merge \"subtract\" &0 &1", 4, "line", "delta")]
    [InlineData("merge \"weighted_sum\" &0 &1 beta=0.5", 4, "'weighted_sum'", "no parameter 'beta'")]
    public void Mistakes_name_the_file_the_line_and_the_word(string lines, int line, string word, string what)
    {
        string path = _dir.File("bad.mecha");
        File.WriteAllText(path, "version 0.1.0\nmodel \"a.safetensors\" model_config=\"sdxl-sgm\" merge_space=\"weight\"\nmodel \"b.safetensors\" model_config=\"sdxl-sgm\" merge_space=\"weight\"\n" + lines);
        var e = Assert.Throws<MergeException>(() => Recipe.Load(path));
        Assert.DoesNotContain("\n", e.Message);
        Assert.Contains($"bad.mecha:{line}", e.Message);
        if (word != "line") Assert.Contains(word, e.Message);
        Assert.Contains(what, e.Message);
    }

    [Fact]
    public void Only_version_0_1_0_is_read()
    {
        File.WriteAllText(_dir.File("old.mecha"), "version 0.0.4\nmodel \"a.safetensors\"");
        var e = Assert.Throws<MergeException>(() => Recipe.Load(_dir.File("old.mecha")));
        Assert.Contains("old.mecha:1", e.Message);
        Assert.Contains("version 0.0.4", e.Message);
    }

    /// <summary>A YAML recipe written as .mecha and read back merges to the YAML recipe's values.</summary>
    [Fact]
    public async Task Export_round_trips_through_the_mecha_reader()
    {
        string yaml = "models:\n  base: base.safetensors\n  a: a.safetensors\n  b: b.safetensors\n  c: c.safetensors\nbase: base\ncomponents:\n" +
            "  unet: { method: ties, models: [a, b, c], k: 0.3, alpha: 0.8 }\n  te0: { method: mean, models: [a, b, c], weights: [1, 2, 3] }\n" +
            "  te1: { method: geometric_median, models: [a, b, c], maxiter: 1 }\n  all: { method: add_difference, models: [a, b, c], alpha: 0.5 }\n" +
            "output: { path: yaml-out.safetensors, dtype: f64 }\n";
        // c lacks the VAE: under missing: base it is fallback(c, base) in the export, exactly the stand-in the YAML merge uses.
        Checkpoints.Write(_dir.File("c.safetensors"), 3, DType.F32, key => !key.StartsWith("first_stage_model."), NonLinearMethodsTests.Tensors(DType.F32));
        File.WriteAllText(_dir.File("r.yaml"), yaml);
        var recipe = Recipe.Load(_dir.File("r.yaml"));
        string text = MechaExport.Write(recipe, ModelArchitecture.Sdxl, m => m.Path);
        Assert.StartsWith("version 0.1.0\n", text);
        Assert.False(text.EndsWith('\n'));
        string fromYaml = await LocalMerge.RunAsync(recipe, new LocalMergeOptions { Threads = 2, HashInputs = false }, null, CancellationToken.None);
        string fromMecha = await MergeMecha(text);
        using var y = SafetensorsFile.Open(fromYaml);
        using var m = SafetensorsFile.Open(fromMecha);
        Assert.Equal(y.Tensors.Select(t => t.Key).Order(), m.Tensors.Select(t => t.Key).Order());
        foreach (var t in y.Tensors.Where(t => t.DType.IsFloat()))
            AssertClose(Checkpoints.Values(fromYaml, t.Key), Checkpoints.Values(fromMecha, t.Key), 1e-12);
    }

    [Theory]
    [InlineData("all: { method: mean, models: [a, b] }\nmissing: skip", "missing: skip")]
    [InlineData("all: { method: weighted_sum, models: [a, b], alpha: 0.5, alphas: { IN00: 0.1 } }", "per-block")]
    [InlineData("all: { method: dare, models: [a, b], ties: false }", "dare_sum")]
    public void Export_refuses_what_mecha_cannot_say(string rule, string what)
    {
        File.WriteAllText(_dir.File("r.yaml"), $"models:\n  base: base.safetensors\n  a: a.safetensors\n  b: b.safetensors\nbase: base\ncomponents:\n  {rule}\noutput: out.safetensors\n");
        var recipe = Recipe.Load(_dir.File("r.yaml"));
        var e = Assert.Throws<MergeException>(() => MechaExport.Write(recipe, ModelArchitecture.Sdxl, m => m.Path));
        Assert.Contains(what, e.Message);
    }
}
