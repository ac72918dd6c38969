using System.Numerics.Tensors;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Numerics;

/// <summary>
/// The merge's hot loops, all elementwise over float64 so results do not depend on chunking or threads:
/// decode-and-accumulate one source, add one partial sum to another, and divide-and-round once at the end.
/// </summary>
public static class MergeKernels
{
    /// <summary>acc += coefficient · decode(source). Products with coefficient 1 are skipped, so plain sums of f16/bf16 stay exact.</summary>
    public static void Accumulate(DType type, ReadOnlySpan<byte> source, double coefficient, Span<double> acc, Span<double> scratch)
    {
        var decoded = scratch[..acc.Length];
        DTypeConvert.ToFloat64(type, source, decoded);
        if (coefficient == 1.0)
            TensorPrimitives.Add(acc, decoded, acc);
        else
            TensorPrimitives.MultiplyAdd(decoded, coefficient, acc, acc);
    }

    /// <summary>left += right: one node of the reduction tree.</summary>
    public static void Combine(Span<double> left, ReadOnlySpan<double> right) => TensorPrimitives.Add(left, right, left);

    /// <summary>Encodes acc / divisor as <paramref name="type"/>: the one rounding of the whole merge.</summary>
    public static void Finish(Span<double> acc, double divisor, DType type, Span<byte> destination)
    {
        if (divisor != 1.0) TensorPrimitives.Divide(acc, divisor, acc);
        DTypeConvert.FromFloat64(acc, type, destination);
    }
}
