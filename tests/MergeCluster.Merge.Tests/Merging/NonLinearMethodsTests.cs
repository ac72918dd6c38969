using MergeCluster.Engine.Execution;
using MergeCluster.Merge.Recipes;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Merging;

/// <summary>geometric_median, model_stock, ties, dare and slerp on real files against <see cref="MethodReference"/>.</summary>
public class NonLinearMethodsTests : IDisposable
{
    private const string Big = "model.diffusion_model.input_blocks.4.1.proj_in.weight";
    private readonly TempDirectory _dir = new();

    /// <summary>The merge tests' keys with the large tensor at 300K elements (two chunks, many panels), small enough for the plain-LINQ references.</summary>
    internal static IReadOnlyList<Checkpoints.Tensor> Tensors(DType dtype) => Checkpoints.SdxlLike(dtype, [600, 500]);

    public NonLinearMethodsTests()
    {
        Checkpoints.Write(_dir.File("base.safetensors"), 100, DType.F16, tensors: Tensors(DType.F16));
        Checkpoints.Write(_dir.File("a.safetensors"), 1, DType.F16, tensors: Tensors(DType.F16));
        Checkpoints.Write(_dir.File("b.safetensors"), 2, DType.BF16, tensors: Tensors(DType.BF16));
        Checkpoints.Write(_dir.File("c.safetensors"), 3, DType.F32, tensors: Tensors(DType.F32));
    }

    public void Dispose() => _dir.Dispose();

    private const string Models = "models:\n  base: base.safetensors\n  a: a.safetensors\n  b: b.safetensors\n  c: c.safetensors\nbase: base\n";

    private async Task<string> Merge(string rule, string dtype = "f64", LocalMergeOptions? options = null, string? name = null)
    {
        File.WriteAllText(_dir.File("recipe.yaml"), Models + $"components:\n  all: {rule}\noutput: {{ path: out.safetensors, dtype: {dtype} }}\n");
        var o = (options ?? new LocalMergeOptions { Threads = 2 }) with { HashInputs = false, OutputPath = _dir.File(name ?? $"out-{Guid.NewGuid():N}.safetensors") };
        return await LocalMerge.RunAsync(Recipe.Load(_dir.File("recipe.yaml")), o, null, CancellationToken.None);
    }

    private double[] V(string model, string key) => Checkpoints.Values(_dir.File($"{model}.safetensors"), key);

    private double[][] Deltas(string key) => new[] { "a", "b", "c" }.Select(m => MethodReference.Subtract(V(m, key), V("base", key))).ToArray();

    /// <summary>Every float tensor of the merge against the reference, within <paramref name="tolerance"/> of the tensor's largest value.</summary>
    private void AssertMatches(string output, Func<string, long[], double[]> reference, double tolerance)
    {
        using var file = SafetensorsFile.Open(output);
        int compared = 0;
        foreach (var t in file.Tensors)
        {
            if (!t.DType.IsFloat())
            {
                Assert.Equal(Checkpoints.RawBytes(_dir.File("base.safetensors"), t.Key), Checkpoints.RawBytes(output, t.Key));
                continue;
            }
            var expected = reference(t.Key, [.. t.Shape]);
            var actual = Checkpoints.Values(output, t.Key);
            double scale = expected.Max(Math.Abs);
            for (int e = 0; e < actual.Length; e++)
                Assert.True(Math.Abs(expected[e] - actual[e]) <= tolerance * scale, $"{t.Key}[{e}]: expected {expected[e]:R}, got {actual[e]:R}");
            compared++;
        }
        Assert.Equal(10, compared);
    }

    [Fact]
    public async Task Geometric_median_is_weiszfelds_point()
    {
        string output = await Merge("{ method: geometric_median, models: [a, b, c] }");
        // Weiszfeld stops when the mean distance stops changing in float64, within ~1e-8 of the optimum, where the
        // objective is flat: two correct implementations part at that level, not at 1e-16.
        AssertMatches(output, (key, _) => MethodReference.GeometricMedian(new[] { "a", "b", "c" }.Select(m => V(m, key)).ToArray()), 1e-7);
    }

    [Fact]
    public async Task Geometric_median_with_one_iteration_is_exact_to_float64()
    {
        string output = await Merge("{ method: geometric_median, models: [a, b, c], maxiter: 1 }");
        AssertMatches(output, (key, _) => MethodReference.GeometricMedian(new[] { "a", "b", "c" }.Select(m => V(m, key)).ToArray(), maxIterations: 1), 1e-13);
    }

    [Fact]
    public async Task Model_stock_scales_the_mean_delta_by_t_per_row()
    {
        string output = await Merge("{ method: model_stock, models: [a, b, c] }");
        AssertMatches(output, (key, shape) => MethodReference.AddDifference(V("base", key), MethodReference.ModelStock(Deltas(key), (int)shape[^1]), 1.0), 1e-13);
    }

    [Theory]
    [InlineData(0.3, false)]
    [InlineData(1.0, false)]
    [InlineData(0.5, true)]
    public async Task Ties_trims_elects_signs_and_takes_the_disjoint_mean(double k, bool vote)
    {
        string output = await Merge($"{{ method: ties, models: [a, b, c], k: {k}, vote_sgn: {(vote ? "true" : "false")}, alpha: 0.8 }}");
        AssertMatches(output, (key, _) => MethodReference.AddDifference(V("base", key), MethodReference.TiesSum(Deltas(key), k, vote), 0.8), 1e-13);
    }

    [Fact]
    public async Task Dare_drops_then_ties_then_rescales()
    {
        string output = await Merge("{ method: dare, models: [a, b, c], probability: 0.3, k: 0.4, seed: 5 }");
        AssertMatches(output, (key, _) =>
        {
            var dropped = Deltas(key).Select((d, i) => MethodReference.Drop(d, key, 5, i, 0.3)).ToArray();
            var ties = MethodReference.TiesSum(dropped, 0.4);
            return MethodReference.AddDifference(V("base", key), ties.Select(v => v / 0.7).ToArray(), 1.0);
        }, 1e-13);
    }

    [Fact]
    public async Task Dare_without_ties_is_the_rescaled_mean_of_the_dropped_deltas()
    {
        string output = await Merge("{ method: dare, models: [a, b, c], probability: 0.5, ties: false, seed: 9, alpha: 0.5 }");
        AssertMatches(output, (key, _) =>
        {
            var dropped = Deltas(key).Select((d, i) => MethodReference.Drop(d, key, 9, i, 0.5)).ToArray();
            var mean = Enumerable.Range(0, dropped[0].Length).Select(e => dropped.Sum(d => d[e]) / 3 / 0.5).ToArray();
            return MethodReference.AddDifference(V("base", key), mean, 0.5);
        }, 1e-13);
    }

    [Fact]
    public async Task Dare_mask_is_a_function_of_the_seed()
    {
        string a = await Merge("{ method: dare, models: [a, b, c], probability: 0.5, seed: 1 }", "f32");
        string b = await Merge("{ method: dare, models: [a, b, c], probability: 0.5, seed: 1 }", "f32", new LocalMergeOptions { Threads = 1 });
        string c = await Merge("{ method: dare, models: [a, b, c], probability: 0.5, seed: 2 }", "f32");
        Assert.Equal(File.ReadAllBytes(a), File.ReadAllBytes(b));
        Assert.NotEqual(Checkpoints.RawBytes(a, Big), Checkpoints.RawBytes(c, Big));
        // About half of each delta survives: the dropped share of one model's delta is p within a few standard deviations.
        var kept = MethodReference.Drop(Enumerable.Repeat(1.0, 300_000).ToArray(), Big, 1, 0, 0.5).Count(v => v != 0);
        Assert.InRange(kept, 150_000 - 2_000, 150_000 + 2_000);
    }

    [Fact]
    public async Task Slerp_interpolates_directions_and_norms()
    {
        string output = await Merge("{ method: slerp, models: [a, c], alpha: 0.3 }");
        AssertMatches(output, (key, _) => MethodReference.Slerp(V("a", key), V("c", key), 0.3), 1e-13);
    }

    [Fact]
    public async Task Slerp_of_parallel_tensors_falls_back_to_lerp()
    {
        // b = 2a: the directions are equal, sin ω = 0, and sd-mecha returns torch.lerp(a, b, alpha) instead of NaN.
        var tensors = Tensors(DType.F32);
        Checkpoints.Write(_dir.File("c.safetensors"), 1, DType.F32, tensors: tensors);
        using (var a = SafetensorsFile.Open(_dir.File("c.safetensors")))
        {
            var layout = SafetensorsLayout.Create(a.Tensors.Select(t => new TensorSpec(t.Key, t.DType, t.Shape)).ToList(), null);
            using var writer = SafetensorsWriter.Create(_dir.File("b.safetensors"), layout);
            foreach (var t in a.Tensors)
            {
                var bytes = a.Bytes(t).ToArray();
                if (t.DType == DType.F32)
                    for (int i = 0; i < bytes.Length; i += 4) BitConverter.TryWriteBytes(bytes.AsSpan(i), 2 * BitConverter.ToSingle(bytes, i));
                writer.Write(layout[t.Key], 0, bytes);
            }
            writer.Commit();
        }
        string output = await Merge("{ method: slerp, models: [c, b], alpha: 0.25 }");
        var c = V("c", Big);
        var actual = Checkpoints.Values(output, Big);
        // Rounding may leave cos ω a hair below 1, and slerp then runs with a tiny ω: either way the values are the lerp's, never NaN.
        for (int e = 0; e < actual.Length; e++)
        {
            double lerp = c[e] + 0.25 * (2 * c[e] - c[e]);
            Assert.True(Math.Abs(lerp - actual[e]) <= 1e-12 * Math.Abs(lerp), $"[{e}] {actual[e]:R} vs lerp {lerp:R}");
        }
    }

    [Fact]
    public async Task Methods_round_once_into_the_output_dtype()
    {
        string wide = await Merge("{ method: ties, models: [a, b, c], k: 0.3 }", "f64");
        string narrow = await Merge("{ method: ties, models: [a, b, c], k: 0.3 }", "f16");
        var w = Checkpoints.Values(wide, Big);
        var n = Checkpoints.RawBytes(narrow, Big);
        for (int e = 0; e < w.Length; e++)
            Assert.Equal(BitConverter.HalfToUInt16Bits((Half)w[e]), BitConverter.ToUInt16(n, e * 2));
    }

    /// <summary>
    /// The bits of every method depend on the recipe alone: thread count, shard size, and whether the cluster's tree
    /// shape (method tensors in the shard's final task) or the fused shape runs them.
    /// </summary>
    [Fact]
    public async Task Method_outputs_are_bit_identical_whatever_threads_shards_and_task_shape()
    {
        const string rules = "{ method: mean, models: [a, b] }\n  unet: { method: ties, models: [a, b, c], k: 0.3 }\n  te0: { method: geometric_median, models: [a, b, c] }\n  te1: { method: slerp, models: [a, b], alpha: 0.7 }\n  vae: { method: dare, models: [a, b, c], probability: 0.2, seed: 3 }\n";
        byte[]? reference = null;
        foreach (var options in MergeNumericsTests.Variations)
        {
            byte[] bytes = File.ReadAllBytes(await Merge(rules, "f16", options));
            if (reference is null) reference = bytes;
            else Assert.True(reference.AsSpan().SequenceEqual(bytes), $"output differs for {options}");
        }
    }

    [Fact]
    public async Task A_pruned_model_is_repaired_from_the_base_so_its_task_vector_is_zero()
    {
        Checkpoints.Write(_dir.File("c.safetensors"), 3, DType.F32, key => !key.StartsWith("first_stage_model."), Tensors(DType.F32));
        string output = await Merge("{ method: ties, models: [a, b, c], k: 0.3 }");
        const string vae = "first_stage_model.decoder.conv_in.weight";
        var deltas = new[] { MethodReference.Subtract(V("a", vae), V("base", vae)), MethodReference.Subtract(V("b", vae), V("base", vae)), new double[V("a", vae).Length] };
        var expected = MethodReference.AddDifference(V("base", vae), MethodReference.TiesSum(deltas, 0.3), 1.0);
        var actual = Checkpoints.Values(output, vae);
        for (int e = 0; e < actual.Length; e++) Assert.True(Math.Abs(expected[e] - actual[e]) <= 1e-15, $"[{e}] {expected[e]} vs {actual[e]}");
    }

    [Fact]
    public void Ties_without_a_base_is_a_recipe_error_with_its_line()
    {
        File.WriteAllText(_dir.File("recipe.yaml"), "models:\n  a: a.safetensors\n  b: b.safetensors\ncomponents:\n  all: { method: ties, models: [a, b] }\noutput: out.safetensors\n");
        var e = Assert.Throws<MergeException>(() => Recipe.Load(_dir.File("recipe.yaml")));
        Assert.Contains("recipe.yaml:5", e.Message);
        Assert.Contains("base", e.Message);
    }
}
