using System.Numerics;
using System.Runtime.Intrinsics;
using System.Security.Cryptography;
using MergeCluster.Engine.Execution;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Recipes;
using MergeCluster.Merge.Synthesis;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Merging;

/// <summary>
/// Every SIMD path the product can take gives the same files. The kernels pick their path from what the runtime
/// reports, so one machine takes one path per process: scripts/test.sh runs the tests of trait Kernel again in
/// processes with AVX-512 off, with AVX2 off (128-bit vectors, as on arm64) and with hardware intrinsics off (scalar),
/// naming each run in MERGECLUSTER_SIMD. The digests below were recorded on the default path; a path that rounds or
/// orders one operation differently changes them.
/// </summary>
[Trait("Category", "Kernel")]
public class SimdPathTests
{
    /// <summary>A run that says it disabled a path must really be without it, or its passes would prove nothing.</summary>
    [Fact]
    public void The_process_takes_the_SIMD_path_its_run_names()
    {
        string run = Environment.GetEnvironmentVariable("MERGECLUSTER_SIMD") ?? "default";
        switch (run)
        {
            case "default":
                Assert.True(Vector.IsHardwareAccelerated, "the default run has no SIMD at all (DOTNET_EnableHWIntrinsic=0 left in the environment?)");
                break;
            case "no-avx512":
                Assert.False(Vector512.IsHardwareAccelerated, "DOTNET_EnableAVX512F=0 left AVX-512 on");
                Assert.True(Vector.IsHardwareAccelerated);
                break;
            case "no-avx2":
                Assert.False(Vector256.IsHardwareAccelerated, "DOTNET_EnableAVX2=0 left 256-bit vectors on");
                Assert.True(Vector128.IsHardwareAccelerated);
                Assert.Equal(16, Vector<byte>.Count);
                break;
            case "scalar":
                Assert.False(Vector.IsHardwareAccelerated, "DOTNET_EnableHWIntrinsic=0 left Vector<T> accelerated");
                Assert.False(Vector128.IsHardwareAccelerated);
                break;
            default:
                Assert.Fail($"MERGECLUSTER_SIMD={run} names no run (default, no-avx512, no-avx2, scalar)");
                break;
        }
    }

    /// <summary>
    /// Recipes that between them take every kernel: f16/bf16/f32 decoding with and without a coefficient, rounding to
    /// each output dtype, the non-finite check, the statistics of ties, dare, geometric median, model stock and slerp.
    /// </summary>
    public static TheoryData<string, string, string> Merges => new()
    {
        { "{ method: mean, models: [a, b, c, d] }", "f16", "145f1d6a8259e7a4e3f067c9010e1c89f6330cf0a377e8a70abf059a3cf969e0" },
        { "{ method: mean, models: [a, b, c, d], weights: [1, 2, 0.5, 3] }", "bf16", "302168e5b47470c19dce9295304af5f7571680ba3792bd154a2fe568b475675b" },
        { "{ method: mean, models: [a, b, c, d] }", "f32", "4192093cd442b563d232e806678e3d0149fd31bec09af524439c3267cead3996" },
        { "{ method: ties, models: [a, b, c], k: 0.3 }", "f16", "e8d99c27f2362aede62738364462b02bae06bf2effa85ad4f82eb56ad2f2d05f" },
        { "{ method: dare, models: [a, b, c], probability: 0.3, k: 0.4, seed: 5 }", "f16", "05534b8437e6d1b3d406bedb1d2649ae9d395efd99fb1bf1f333fd2927b82bba" },
        { "{ method: geometric_median, models: [a, b, c] }", "f32", "e9f730282b851f2179664e9933652390339ae6e4e3d3c1732526aff175cf36ef" },
        { "{ method: model_stock, models: [a, b, c] }", "f16", "1c796bbd6e3db42b920fb0f00d41fcfe286eec2fb33224fe22ce75327351f5fc" },
        { "{ method: slerp, models: [a, c], alpha: 0.3 }", "bf16", "c5493fef1273c2ccc6df2a8d83652ae6842ec0da296de13236160da208ffd352" },
    };

    [Theory, MemberData(nameof(Merges))]
    public async Task Merged_files_have_the_recorded_bits(string rule, string dtype, string digest)
    {
        using var dir = new TempDirectory();
        var tensors = NonLinearMethodsTests.Tensors(DType.F16);
        Checkpoints.Write(dir.File("base.safetensors"), 100, DType.F16, tensors: tensors);
        Checkpoints.Write(dir.File("a.safetensors"), 1, DType.F16, tensors: tensors);
        Checkpoints.Write(dir.File("b.safetensors"), 2, DType.BF16, tensors: NonLinearMethodsTests.Tensors(DType.BF16));
        Checkpoints.Write(dir.File("c.safetensors"), 3, DType.F32, tensors: NonLinearMethodsTests.Tensors(DType.F32));
        Checkpoints.Write(dir.File("d.safetensors"), 4, DType.F16, tensors: tensors);
        File.WriteAllText(dir.File("recipe.yaml"),
            "models:\n  base: base.safetensors\n  a: a.safetensors\n  b: b.safetensors\n  c: c.safetensors\n  d: d.safetensors\nbase: base\n" +
            $"components:\n  all: {rule}\noutput: {{ path: out.safetensors, dtype: {dtype} }}\n");
        string output = await LocalMerge.RunAsync(Recipe.Load(dir.File("recipe.yaml")), new LocalMergeOptions { Threads = 2, HashInputs = false }, null, CancellationToken.None);
        Recorded(digest, output);
    }

    [Theory]
    [InlineData("f16", "b976025c1d06824541497cf89efb000a470ce3dc8b3b93714d78235c8ddb0656")]
    [InlineData("bf16", "173f88f27320b15269ec5521d05726965520fe0db2f94633f533c8ad1f1a081f")]
    [InlineData("f32", "576cdfab4f2b357a4181eeee050dacf13a8c880fc92f55bc23781760e3fad998")]
    public void Synthetic_checkpoints_have_the_recorded_bits(string dtype, string digest)
    {
        using var dir = new TempDirectory();
        DTypes.TryParseUser(dtype, out var type);
        string path = dir.File("m.safetensors");
        SyntheticCheckpoint.Write(path, new SynthesisOptions { Architecture = ModelArchitecture.Sd15, Seed = 7, Scale = 0.08, FloatType = type });
        Recorded(digest, path);
    }

    private static void Recorded(string digest, string path)
    {
        string actual;
        using (var stream = File.OpenRead(path)) actual = Convert.ToHexStringLower(SHA256.HashData(stream));
        Assert.True(actual == digest, $"sha256 {actual} on the {Environment.GetEnvironmentVariable("MERGECLUSTER_SIMD") ?? "default"} path, recorded {digest}");
    }
}
