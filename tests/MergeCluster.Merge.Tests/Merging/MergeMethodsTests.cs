using MergeCluster.Merge.Tests.Support;
using MergeCluster.Engine.Execution;
using MergeCluster.Planning;
using MergeCluster.Merge.Recipes;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Merging;

public class MergeMethodsTests : IDisposable
{
    private const string Unet = "model.diffusion_model.input_blocks.0.0.weight";
    private const string UnetOut = "model.diffusion_model.out.2.bias";
    private const string Mid = "model.diffusion_model.middle_block.1.norm.weight";
    private const string Vae = "first_stage_model.decoder.conv_in.weight";
    private const string Te0 = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight";
    private const string Te1 = "conditioner.embedders.1.model.ln_final.weight";
    private const string PositionIds = "conditioner.embedders.0.transformer.text_model.embeddings.position_ids";

    private readonly TempDirectory _dir = new();

    public MergeMethodsTests()
    {
        Checkpoints.Write(_dir.File("base.safetensors"), 100, DType.F16);
        Checkpoints.Write(_dir.File("a.safetensors"), 1, DType.F16);
        Checkpoints.Write(_dir.File("b.safetensors"), 2, DType.BF16);
        Checkpoints.Write(_dir.File("c.safetensors"), 3, DType.F32);
        Checkpoints.Write(_dir.File("pruned.safetensors"), 4, DType.F16, key => !key.StartsWith("first_stage_model.") && !key.StartsWith("conditioner.embedders.1."));
    }

    public void Dispose() => _dir.Dispose();

    private const string Models = "models:\n  base: base.safetensors\n  a: a.safetensors\n  b: b.safetensors\n  c: c.safetensors\n  pruned: pruned.safetensors\n";

    private async Task<string> Merge(string body, string dtype = "f32")
    {
        File.WriteAllText(_dir.File("recipe.yaml"), Models + body + $"output: {{ path: out.safetensors, dtype: {dtype} }}\n");
        return await LocalMerge.RunAsync(Recipe.Load(_dir.File("recipe.yaml")), new LocalMergeOptions { Threads = 2, HashInputs = false }, null, CancellationToken.None);
    }

    private double[] V(string model, string key) => Checkpoints.Values(_dir.File($"{model}.safetensors"), key);

    private static void AssertClose(Func<int, double> expected, double[] actual)
    {
        for (int i = 0; i < actual.Length; i++)
        {
            double e = (float)expected(i);
            Assert.True(Math.Abs(e - actual[i]) <= Math.Abs(e) * 1.2e-7 + 1e-30, $"[{i}] expected {e}, got {actual[i]}");
        }
    }

    [Fact]
    public async Task Each_component_follows_its_own_rule_and_the_base_fills_the_rest()
    {
        string output = await Merge("base: base\ncomponents:\n  unet: { method: mean, models: [a, b, c] }\n  te0: { method: mean, models: [b, c] }\n  te1: { method: weighted_sum, models: [a, b], alpha: 0.3 }\n");
        AssertClose(i => (V("a", Unet)[i] + V("b", Unet)[i] + V("c", Unet)[i]) / 3, Checkpoints.Values(output, Unet));
        AssertClose(i => (V("b", Te0)[i] + V("c", Te0)[i]) / 2, Checkpoints.Values(output, Te0));
        AssertClose(i => 0.7 * V("a", Te1)[i] + 0.3 * V("b", Te1)[i], Checkpoints.Values(output, Te1));
        // No rule for the VAE: it is the base's, converted to the output dtype.
        AssertClose(i => V("base", Vae)[i], Checkpoints.Values(output, Vae));
        // Integer tensors are indices, never averaged: taken from the base with their own dtype.
        Assert.Equal(Checkpoints.RawBytes(_dir.File("base.safetensors"), PositionIds), Checkpoints.RawBytes(output, PositionIds));
    }

    [Fact]
    public async Task Pruned_model_is_repaired_from_the_base_by_default()
    {
        string output = await Merge("base: base\ncomponents:\n  all: { method: mean, models: [a, pruned] }\n");
        AssertClose(i => (V("a", Vae)[i] + V("base", Vae)[i]) / 2, Checkpoints.Values(output, Vae));
        AssertClose(i => (V("a", Unet)[i] + V("pruned", Unet)[i]) / 2, Checkpoints.Values(output, Unet));
        var plan = Planner.Create(Recipe.Load(_dir.File("recipe.yaml")));
        Assert.Contains(plan.Missing, m => m.Model == "pruned" && m.Component == MergeCluster.Merge.Architecture.Component.Vae && m.Resolution.Contains("base"));
    }

    [Fact]
    public async Task Missing_skip_averages_only_the_models_that_have_the_key()
    {
        string output = await Merge("base: base\nmissing: skip\ncomponents:\n  all: { method: mean, models: [a, pruned, c] }\n");
        AssertClose(i => (V("a", Vae)[i] + V("c", Vae)[i]) / 2, Checkpoints.Values(output, Vae));
        AssertClose(i => (V("a", Unet)[i] + V("pruned", Unet)[i] + V("c", Unet)[i]) / 3, Checkpoints.Values(output, Unet));
    }

    [Fact]
    public async Task Missing_error_names_the_file_the_key_and_the_model()
    {
        var e = await Assert.ThrowsAsync<MergeException>(() => Merge("base: base\nmissing: error\ncomponents:\n  all: { method: mean, models: [a, pruned] }\n"));
        Assert.Contains("pruned.safetensors", e.Message);
        Assert.Contains("conditioner.embedders.1.", e.Message);
        Assert.Contains("'pruned'", e.Message);
        Assert.False(File.Exists(_dir.File("out.safetensors")));
    }

    [Fact]
    public async Task Weighted_mean_add_difference_and_copy()
    {
        string output = await Merge("components:\n  unet: { method: mean, models: [a, b, c], weights: [1, 2, 5] }\n  te0: { method: add_difference, models: [a, b, c], alpha: 0.5 }\n  te1: { method: copy, model: c }\n  vae: { method: copy, model: b }\n  other: { method: copy, model: a }\n");
        AssertClose(i => (V("a", Unet)[i] + 2 * V("b", Unet)[i] + 5 * V("c", Unet)[i]) / 8, Checkpoints.Values(output, Unet));
        AssertClose(i => V("a", Te0)[i] + 0.5 * V("b", Te0)[i] - 0.5 * V("c", Te0)[i], Checkpoints.Values(output, Te0));
        AssertClose(i => V("c", Te1)[i], Checkpoints.Values(output, Te1));
        AssertClose(i => V("b", Vae)[i], Checkpoints.Values(output, Vae));
    }

    [Fact]
    public async Task Copy_into_the_same_dtype_is_byte_exact()
    {
        string output = await Merge("base: base\ncomponents:\n  all: { method: copy, model: a }\n", dtype: "f16");
        using var a = SafetensorsFile.Open(_dir.File("a.safetensors"));
        using var o = SafetensorsFile.Open(output);
        foreach (var t in a.Tensors)
            Assert.True(a.Bytes(t).SequenceEqual(o.Bytes(o.Get(t.Key))), t.Key);
    }

    [Fact]
    public async Task Per_block_alphas_use_the_supermerger_naming()
    {
        string output = await Merge("base: base\ncomponents:\n  unet: { method: weighted_sum, models: [a, c], alpha: 0.5, alphas: { IN00: 0.1, M00: 0.9, OUT08: 0.25 } }\n");
        AssertClose(i => 0.9 * V("a", Unet)[i] + 0.1 * V("c", Unet)[i], Checkpoints.Values(output, Unet));
        AssertClose(i => 0.1 * V("a", Mid)[i] + 0.9 * V("c", Mid)[i], Checkpoints.Values(output, Mid));
        // SDXL's final `out.` layers belong to its last OUT block, OUT08.
        AssertClose(i => 0.75 * V("a", UnetOut)[i] + 0.25 * V("c", UnetOut)[i], Checkpoints.Values(output, UnetOut));
    }

    [Fact]
    public async Task Shape_mismatch_is_an_error_naming_the_key_and_both_models()
    {
        var tensors = Checkpoints.SdxlLike(DType.F16).Select(t => t.Key == Unet ? t with { Shape = [32, 9, 3, 3] } : t).ToList();
        Checkpoints.Write(_dir.File("c.safetensors"), 9, DType.F16, tensors: tensors);
        var e = await Assert.ThrowsAsync<MergeException>(() => Merge("components:\n  all: { method: mean, models: [a, c] }\n"));
        Assert.Contains(Unet, e.Message);
        Assert.Contains("'a'", e.Message);
        Assert.Contains("'c'", e.Message);
    }

    [Fact]
    public async Task A_failed_merge_leaves_an_existing_output_untouched()
    {
        File.WriteAllText(_dir.File("out.safetensors"), "precious");
        File.WriteAllText(_dir.File("recipe.yaml"), Models + "components:\n  all: { method: mean, models: [a, b] }\noutput: out.safetensors\n");
        var recipe = Recipe.Load(_dir.File("recipe.yaml"));
        // A truncated input fails the merge.
        using (var f = new FileStream(_dir.File("b.safetensors"), FileMode.Open)) f.SetLength(f.Length - 1000);
        await Assert.ThrowsAnyAsync<Exception>(() => LocalMerge.RunAsync(recipe, new LocalMergeOptions { Threads = 2, HashInputs = false }, null, CancellationToken.None));
        Assert.Equal("precious", File.ReadAllText(_dir.File("out.safetensors")));
        Assert.DoesNotContain(Directory.GetFiles(_dir.Path), f => f.EndsWith(".tmp"));
    }
}
