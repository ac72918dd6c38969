using BenchmarkDotNet.Attributes;
using MergeCluster.Safetensors;

namespace MergeCluster.Benchmarks;

/// <summary>The merge engine's hot conversions over 1M elements of weight-like values; results are per element.</summary>
public class KernelBenchmarks
{
    private const int N = 1 << 20;
    private readonly byte[] _f16 = new byte[N * 2];
    private readonly byte[] _bf16 = new byte[N * 2];
    private readonly double[] _doubles = new double[N];
    private readonly float[] _floats = new float[N];
    private readonly byte[] _out16 = new byte[N * 2];

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(7);
        for (int i = 0; i < N; i++)
        {
            // Roughly normal with sigma 0.02, like trained weights, so subnormals appear as often as in a checkpoint.
            _doubles[i] = (random.NextDouble() + random.NextDouble() + random.NextDouble() - 1.5) * 0.04;
        }
        DTypeConvert.FromFloat64(_doubles, DType.F16, _f16);
        DTypeConvert.FromFloat64(_doubles, DType.BF16, _bf16);
    }

    [Benchmark(OperationsPerInvoke = N)] public void F16_to_F64() => DTypeConvert.ToFloat64(DType.F16, _f16, _doubles);
    [Benchmark(OperationsPerInvoke = N)] public void BF16_to_F64() => DTypeConvert.ToFloat64(DType.BF16, _bf16, _doubles);
    [Benchmark(OperationsPerInvoke = N)] public void F64_to_F16() => DTypeConvert.FromFloat64(_doubles, DType.F16, _out16);
    [Benchmark(OperationsPerInvoke = N)] public void F64_to_BF16() => DTypeConvert.FromFloat64(_doubles, DType.BF16, _out16);
    [Benchmark(OperationsPerInvoke = N)] public void F16_to_F32() => DTypeConvert.ToFloat32(DType.F16, _f16, _floats);
    [Benchmark(OperationsPerInvoke = N)] public void BF16_to_F32() => DTypeConvert.ToFloat32(DType.BF16, _bf16, _floats);

    // The merge's hot path works in blocks of ShardExecutor.BlockElements (4096) that stay in L1/L2: per source a fused
    // decode-and-accumulate, per output element one divide-and-round. Same kernels on one block, as in cache.
    private const int Block = 4096;
    private readonly double[] _acc = new double[Block];

    [Benchmark(OperationsPerInvoke = N)]
    public void F16_accumulate_block()
    {
        for (int b = 0; b < N; b += Block) DTypeConvert.AccumulateFloat64(DType.F16, _f16.AsSpan(0, 2 * Block), 1.0, _acc);
    }

    [Benchmark(OperationsPerInvoke = N)]
    public void F16_accumulate_scaled_block()
    {
        for (int b = 0; b < N; b += Block) DTypeConvert.AccumulateFloat64(DType.F16, _f16.AsSpan(0, 2 * Block), 0.25, _acc);
    }

    [Benchmark(OperationsPerInvoke = N)]
    public void F64_to_F16_block()
    {
        for (int b = 0; b < N; b += Block) DTypeConvert.FromFloat64(_doubles.AsSpan(0, Block), DType.F16, _out16.AsSpan(0, 2 * Block));
    }

    /// <summary>The scalar reference, element by element, for scale.</summary>
    [Benchmark(OperationsPerInvoke = N)]
    public void F64_to_F16_scalar()
    {
        var dest = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(_out16.AsSpan());
        for (int i = 0; i < N; i++) dest[i] = (ushort)DTypeConvert.FromFloat64(_doubles[i], DType.F16);
    }
}
