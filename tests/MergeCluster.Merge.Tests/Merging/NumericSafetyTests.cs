using MergeCluster.Engine.Execution;
using MergeCluster.Merge.Recipes;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Merging;

/// <summary>Weights at the ends of the float64 range, terms that must not be read, and non-finite values in or out.</summary>
public class NumericSafetyTests : IDisposable
{
    private const string Unet = "model.diffusion_model.input_blocks.0.0.weight";
    private readonly TempDirectory _dir = new();

    public NumericSafetyTests()
    {
        Checkpoints.Write(_dir.File("a.safetensors"), 1, DType.F16);
        Checkpoints.Write(_dir.File("b.safetensors"), 2, DType.F16);
        Checkpoints.Write(_dir.File("c.safetensors"), 3, DType.F16);
    }

    public void Dispose() => _dir.Dispose();

    private async Task<string> Merge(string rule, string name = "out", NonFinitePolicy policy = NonFinitePolicy.Warn, List<NonFiniteTensor>? found = null)
    {
        File.WriteAllText(_dir.File($"{name}.yaml"),
            $"models:\n  a: a.safetensors\n  b: b.safetensors\n  c: c.safetensors\ncomponents:\n  all: {rule}\noutput: {{ path: {name}.safetensors, dtype: f16 }}\n");
        return await LocalMerge.RunAsync(Recipe.Load(_dir.File($"{name}.yaml")),
            new LocalMergeOptions { Threads = 2, HashInputs = false, NonFinite = policy, OnNonFinite = t => { lock (_dir) found?.Add(t); } }, null, CancellationToken.None);
    }

    /// <summary>Every tensor's bytes (the headers differ: each file records its own recipe).</summary>
    private static Dictionary<string, byte[]> Tensors(string path)
    {
        using var file = SafetensorsFile.Open(path);
        return file.Tensors.ToDictionary(t => t.Key, t => file.Bytes(t).ToArray());
    }

    private static void AssertSameTensors(string expected, string actual)
    {
        var e = Tensors(expected);
        var a = Tensors(actual);
        Assert.Equal(e.Keys.Order(), a.Keys.Order());
        foreach (var (key, bytes) in e)
        {
            int at = bytes.AsSpan().CommonPrefixLength(a[key]);
            Assert.True(at == bytes.Length && bytes.Length == a[key].Length,
                $"{key} of {actual} differs from {expected} at byte {at} of {bytes.Length}: {(at < a[key].Length ? a[key][at] : -1)} instead of {(at < bytes.Length ? bytes[at] : -1)}");
        }
    }

    /// <summary>A NaN (F16 0x7E00) planted in the first element of a model's UNET tensor.</summary>
    private void PlantNaN(string model) => CheckpointEdits.Patch(_dir.File($"{model}.safetensors"), Unet, 0, [0x00, 0x7E]);

    [Theory]
    [InlineData("1e308")]
    [InlineData("5e-324")]
    [InlineData("3")]
    public async Task Equal_weights_of_any_size_give_the_plain_mean_bit_for_bit(string weight)
    {
        string plain = await Merge("{ method: mean, models: [a, b, c] }", "plain");
        string weighted = await Merge($"{{ method: mean, models: [a, b, c], weights: [{weight}, {weight}, {weight}] }}", "weighted");
        AssertSameTensors(plain, weighted);
    }

    [Fact]
    public async Task A_term_with_coefficient_zero_is_not_read_so_a_NaN_in_it_goes_nowhere()
    {
        PlantNaN("a");
        var found = new List<NonFiniteTensor>();
        string sum = await Merge("{ method: weighted_sum, models: [a, b], alpha: 1 }", "sum", found: found);
        string b = await Merge("{ method: copy, model: b }", "copy");
        AssertSameTensors(b, sum);
        string diff = await Merge("{ method: add_difference, models: [b, a, c], alpha: 0 }", "diff", found: found);
        AssertSameTensors(b, diff);
        string weighted = await Merge("{ method: mean, models: [a, b], weights: [0, 1] }", "weighted", found: found);
        AssertSameTensors(b, weighted);
        Assert.Empty(found);
    }

    [Fact]
    public async Task A_NaN_from_an_input_is_named_with_the_input_it_came_from()
    {
        PlantNaN("b");
        var found = new List<NonFiniteTensor>();
        await Merge("{ method: mean, models: [a, b, c] }", found: found);
        var t = Assert.Single(found);
        Assert.Equal(Unet, t.Key);
        Assert.Equal(["b"], t.Inputs);
        Assert.Contains("model 'b' holds such values", t.Cause);
    }

    [Fact]
    public async Task A_sum_that_overflows_the_output_dtype_is_named_as_an_overflow()
    {
        // Finite F16 inputs: their mean is 20000, but a + (b - c) is 180000, past F16's largest value.
        CheckpointEdits.Patch(_dir.File("a.safetensors"), Unet, 0, BitConverter.GetBytes((Half)60000));
        CheckpointEdits.Patch(_dir.File("b.safetensors"), Unet, 0, BitConverter.GetBytes((Half)60000));
        CheckpointEdits.Patch(_dir.File("c.safetensors"), Unet, 0, BitConverter.GetBytes((Half)(-60000)));
        var found = new List<NonFiniteTensor>();
        await Merge("{ method: add_difference, models: [a, b, c], alpha: 1 }", found: found);
        var t = Assert.Single(found);
        Assert.Empty(t.Inputs);
        Assert.Contains("overflowed F16", t.Cause);
        found.Clear();
        await Merge("{ method: mean, models: [a, b, c] }", "mean", found: found);
        Assert.Empty(found);
    }

    [Fact]
    public async Task Policy_error_writes_nothing_and_keep_says_nothing()
    {
        PlantNaN("a");
        File.WriteAllText(_dir.File("out.safetensors"), "the previous merge");
        var e = await Assert.ThrowsAsync<MergeException>(() => Merge("{ method: mean, models: [a, b] }", policy: NonFinitePolicy.Error));
        Assert.Contains(Unet, e.Message);
        Assert.Contains("model 'a'", e.Message);
        Assert.Equal("the previous merge", File.ReadAllText(_dir.File("out.safetensors")));
        Assert.Empty(Directory.GetFiles(_dir.Path, ".*"));

        var found = new List<NonFiniteTensor>();
        await Merge("{ method: mean, models: [a, b] }", policy: NonFinitePolicy.Keep, found: found);
        Assert.Empty(found);
        Assert.True(double.IsNaN(Checkpoints.Values(_dir.File("out.safetensors"), Unet)[0]));
    }

    [Fact]
    public async Task A_float_tensor_in_one_model_and_an_integer_one_in_another_is_an_error_not_a_silent_copy()
    {
        var tensors = Checkpoints.SdxlLike(DType.F16).Select(t => t.Key == Unet ? t with { DType = DType.I8 } : t).ToList();
        Checkpoints.Write(_dir.File("c.safetensors"), 3, DType.F16, tensors: tensors);
        var e = await Assert.ThrowsAsync<MergeException>(() => Merge("{ method: mean, models: [a, c] }"));
        Assert.Contains(Unet, e.Message);
        Assert.Contains("I8 in model 'c'", e.Message);
        Assert.Contains("F16 in model 'a'", e.Message);
    }

    [Fact]
    public void An_output_header_over_the_readers_limit_is_refused_when_planning()
    {
        // Two inputs of about 60 MB of key names each: either header is valid, their union is not.
        foreach (string name in new[] { "x", "y" })
            CheckpointEdits.CreateZeroed(_dir.File($"{name}.safetensors"),
                Enumerable.Range(0, 220_000).Select(i => ($"model.diffusion_model.{name}.{i:D7}.{new string('k', 240)}", DType.F16, new long[] { 1 })));
        File.WriteAllText(_dir.File("big.yaml"), "models:\n  x: x.safetensors\n  y: y.safetensors\nmissing: skip\ncomponents:\n  all: { method: mean, models: [x, y] }\noutput: big.safetensors\n");
        var e = Assert.Throws<MergeException>(() => Planner.Create(Recipe.Load(_dir.File("big.yaml"))));
        Assert.Contains("over the 100,000,000-byte limit", e.Message);
        Assert.Contains("440,000 tensors", e.Message);
    }
}
