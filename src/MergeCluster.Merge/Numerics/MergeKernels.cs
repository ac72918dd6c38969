using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Numerics;

/// <summary>
/// The merge's hot loops, all elementwise over float64 so results do not depend on chunking or threads:
/// decode-and-accumulate one source, add one partial sum to another, and divide-and-round once at the end.
/// Callers pass cache-sized blocks (a few thousand elements) so the accumulators stay in L1/L2 between passes.
/// </summary>
public static class MergeKernels
{
    /// <summary>
    /// acc += coefficient · decode(source), in one pass. Coefficient 1 multiplies exactly, so plain sums of
    /// f16/bf16 stay exact and equal acc + decode(source) bit for bit.
    /// </summary>
    public static void Accumulate(DType type, ReadOnlySpan<byte> source, double coefficient, Span<double> acc) =>
        DTypeConvert.AccumulateFloat64(type, source, coefficient, acc);

    /// <summary>
    /// acc = Σₜ coefficients[t] · decode(sources[t]) over terms of one dtype, in order from +0.0, in one pass over acc:
    /// the same bits as clearing acc and calling <see cref="Accumulate"/> per term.
    /// </summary>
    public static void Sum(DType type, ReadOnlySpan<nint> sources, ReadOnlySpan<double> coefficients, Span<double> acc) =>
        DTypeConvert.SumFloat64(type, sources, coefficients, acc);

    /// <summary>left += right: one node of the reduction tree.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // per 4K block from the first call; see Scale
    public static void Combine(Span<double> left, ReadOnlySpan<double> right)
    {
        if (right.Length != left.Length) throw new ArgumentException("partial sums differ in length");
        int i = 0;
        ref double l = ref MemoryMarshal.GetReference(left);
        ref double r = ref MemoryMarshal.GetReference(right);
        if (Vector512.IsHardwareAccelerated)
            for (; i <= left.Length - Vector512<double>.Count; i += Vector512<double>.Count)
                (Vector512.LoadUnsafe(ref l, (nuint)i) + Vector512.LoadUnsafe(ref r, (nuint)i)).StoreUnsafe(ref l, (nuint)i);
        if (Vector256.IsHardwareAccelerated)
            for (; i <= left.Length - Vector256<double>.Count; i += Vector256<double>.Count)
                (Vector256.LoadUnsafe(ref l, (nuint)i) + Vector256.LoadUnsafe(ref r, (nuint)i)).StoreUnsafe(ref l, (nuint)i);
        for (; i < left.Length; i++) left[i] += right[i];
    }

    /// <summary>Encodes acc / divisor as <paramref name="type"/>: the one rounding of the whole merge. Overwrites acc.</summary>
    public static void Finish(Span<double> acc, double divisor, DType type, Span<byte> destination)
    {
        if (divisor != 1.0)
        {
            // Dividing by a power of two is the same as multiplying by its exact reciprocal: both are the correctly
            // rounded x / divisor (subnormal results included), and a multiply is several times cheaper than a divide.
            double reciprocal = 1.0 / divisor;
            if (IsPowerOfTwo(divisor) && 1.0 / reciprocal == divisor && double.IsNormal(reciprocal))
                Scale<Multiply>(acc, reciprocal);
            else
                Scale<Divide>(acc, divisor);
        }
        DTypeConvert.FromFloat64(acc, type, destination);
    }

    /// <summary>
    /// acc[i] = acc[i] * by or acc[i] / by, one IEEE operation per element in every path. Written out rather than
    /// TensorPrimitives so it is fully optimised from its first call (the merge calls it per 4K block, and tier-0
    /// generic vector code is many times slower).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Scale<TOp>(Span<double> acc, double by) where TOp : IScaleOp
    {
        int i = 0;
        ref double a = ref MemoryMarshal.GetReference(acc);
        if (Vector512.IsHardwareAccelerated)
        {
            var v = Vector512.Create(by);
            for (; i <= acc.Length - Vector512<double>.Count; i += Vector512<double>.Count)
                TOp.Apply(Vector512.LoadUnsafe(ref a, (nuint)i), v).StoreUnsafe(ref a, (nuint)i);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var v = Vector256.Create(by);
            for (; i <= acc.Length - Vector256<double>.Count; i += Vector256<double>.Count)
                TOp.Apply(Vector256.LoadUnsafe(ref a, (nuint)i), v).StoreUnsafe(ref a, (nuint)i);
        }
        for (; i < acc.Length; i++) acc[i] = TOp.Apply(acc[i], by);
    }

    private interface IScaleOp
    {
        static abstract double Apply(double x, double by);
        static abstract Vector256<double> Apply(Vector256<double> x, Vector256<double> by);
        static abstract Vector512<double> Apply(Vector512<double> x, Vector512<double> by);
    }

    private readonly struct Multiply : IScaleOp
    {
        public static double Apply(double x, double by) => x * by;
        public static Vector256<double> Apply(Vector256<double> x, Vector256<double> by) => x * by;
        public static Vector512<double> Apply(Vector512<double> x, Vector512<double> by) => x * by;
    }

    private readonly struct Divide : IScaleOp
    {
        public static double Apply(double x, double by) => x / by;
        public static Vector256<double> Apply(Vector256<double> x, Vector256<double> by) => x / by;
        public static Vector512<double> Apply(Vector512<double> x, Vector512<double> by) => x / by;
    }

    /// <summary>A positive finite power of two (mantissa bits all zero, normal exponent).</summary>
    private static bool IsPowerOfTwo(double x) =>
        double.IsNormal(x) && x > 0 && (BitConverter.DoubleToUInt64Bits(x) & 0x000F_FFFF_FFFF_FFFF) == 0;
}
