using MergeCluster.Merge.Tests.Support;
using MergeCluster.Engine.Execution;
using MergeCluster.Merge.Recipes;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Merging;

public class MergeNumericsTests
{
    /// <summary>Runs that must all give the same bits: one or two threads, one shard or many, fused or tree-shaped tasks.</summary>
    public static readonly LocalMergeOptions[] Variations =
    [
        new() { Threads = 1, ShardBytes = 1L << 30 },
        new() { Threads = 2, ShardBytes = 4096 },
        new() { Threads = 2, ShardBytes = 100_000, Shape = TaskShape.Tree },
        new() { Threads = 1, ShardBytes = 1, Shape = TaskShape.Tree },
    ];

    private static async Task<string> Merge(TempDirectory dir, string recipeYaml, LocalMergeOptions? options = null)
    {
        File.WriteAllText(dir.File("recipe.yaml"), recipeYaml);
        var recipe = Recipe.Load(dir.File("recipe.yaml"));
        return await LocalMerge.RunAsync(recipe, options ?? new LocalMergeOptions { Threads = 2, HashInputs = false }, null, CancellationToken.None);
    }

    [Theory]
    [InlineData("f16")]
    [InlineData("bf16")]
    [InlineData("f32")]
    public async Task Mean_of_mixed_dtypes_is_correctly_rounded(string outDtype)
    {
        using var dir = new TempDirectory();
        var dtypes = new[] { DType.F16, DType.F16, DType.BF16, DType.F32, DType.F16, DType.F16, DType.F32 };
        for (int i = 0; i < dtypes.Length; i++) Checkpoints.Write(dir.File($"m{i}.safetensors"), i + 1, dtypes[i]);
        string models = string.Join("\n", dtypes.Select((_, i) => $"  m{i}: m{i}.safetensors"));
        string list = string.Join(", ", dtypes.Select((_, i) => $"m{i}"));
        string output = await Merge(dir, $"models:\n{models}\ncomponents:\n  all: {{ method: mean, models: [{list}] }}\noutput: {{ path: out.safetensors, dtype: {outDtype} }}\nreduce: {{ group: 3 }}\n");

        DTypes.TryParseUser(outDtype, out var type);
        long total = 0, exact = 0;
        using var merged = SafetensorsFile.Open(output);
        foreach (var t in merged.Tensors.Where(t => t.DType.IsFloat()))
        {
            Assert.Equal(type, t.DType);
            var inputs = Enumerable.Range(0, dtypes.Length).Select(i => Checkpoints.Values(dir.File($"m{i}.safetensors"), t.Key)).ToArray();
            var raw = merged.Bytes(t);
            var column = new double[inputs.Length];
            for (int e = 0; e < t.ElementCount; e++)
            {
                for (int m = 0; m < inputs.Length; m++) column[m] = inputs[m][e];
                ulong expected = ExactReference.RoundedMean(column, inputs.Length, type);
                ulong actual = ExactReference.Bits(raw, e, type);
                total++;
                if (expected == actual) exact++;
                else Assert.True(ExactReference.Ulps(expected, actual, type) <= 1, $"{t.Key}[{e}]: {actual:x} vs exact {expected:x}");
            }
        }
        Assert.True(total > 700_000, $"only {total} elements compared");
        Assert.True(exact >= total * 0.9999, $"{exact} of {total} elements correctly rounded");
    }

    [Fact]
    public async Task Output_is_bit_identical_whatever_threads_shards_and_task_shape()
    {
        using var dir = new TempDirectory();
        for (int i = 0; i < 5; i++) Checkpoints.Write(dir.File($"m{i}.safetensors"), i + 1, i == 2 ? DType.BF16 : DType.F32);
        string recipe = "models:\n" + string.Join("\n", Enumerable.Range(0, 5).Select(i => $"  m{i}: m{i}.safetensors")) +
            "\ncomponents:\n  all: { method: mean, models: [m0, m1, m2, m3, m4], weights: [1, 2, 3, 0.5, 0.25] }\noutput: { path: out.safetensors, dtype: f16 }\nreduce: { group: 2 }\n";
        File.WriteAllText(dir.File("recipe.yaml"), recipe);
        var parsed = Recipe.Load(dir.File("recipe.yaml"));

        byte[]? reference = null;
        foreach (var options in Variations)
        {
            string output = await LocalMerge.RunAsync(parsed, options with { HashInputs = false, OutputPath = dir.File($"out-{Guid.NewGuid():N}.safetensors") }, null, CancellationToken.None);
            byte[] bytes = File.ReadAllBytes(output);
            if (reference is null) reference = bytes;
            else Assert.True(reference.AsSpan().SequenceEqual(bytes), $"output differs for {options}");
        }
    }
}
