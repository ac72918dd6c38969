using System.Numerics.Tensors;
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

    /// <summary>left += right: one node of the reduction tree.</summary>
    public static void Combine(Span<double> left, ReadOnlySpan<double> right) => TensorPrimitives.Add(left, right, left);

    /// <summary>Encodes acc / divisor as <paramref name="type"/>: the one rounding of the whole merge. Overwrites acc.</summary>
    public static void Finish(Span<double> acc, double divisor, DType type, Span<byte> destination)
    {
        if (divisor != 1.0)
        {
            // Dividing by a power of two is the same as multiplying by its exact reciprocal: both are the correctly
            // rounded x / divisor (subnormal results included), and a multiply is several times cheaper than a divide.
            double reciprocal = 1.0 / divisor;
            if (IsPowerOfTwo(divisor) && 1.0 / reciprocal == divisor && double.IsNormal(reciprocal))
                TensorPrimitives.Multiply(acc, reciprocal, acc);
            else
                TensorPrimitives.Divide(acc, divisor, acc);
        }
        DTypeConvert.FromFloat64(acc, type, destination);
    }

    /// <summary>A positive finite power of two (mantissa bits all zero, normal exponent).</summary>
    private static bool IsPowerOfTwo(double x) =>
        double.IsNormal(x) && x > 0 && (BitConverter.DoubleToUInt64Bits(x) & 0x000F_FFFF_FFFF_FFFF) == 0;
}
