using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace MergeCluster.Merge.Numerics;

/// <summary>Which SIMD width a statistics kernel runs at; every path gives the same bits.</summary>
internal enum SimdPath { Auto, Scalar, Vector256, Vector512 }

/// <summary>
/// Sums whose order is fixed by the data alone: element k of a run goes to lane k mod 8 (one Vector512, two Vector256
/// halves or eight scalars, whatever the machine), products and sums are rounded separately (never an FMA), and the
/// eight lanes are combined as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)). So a dot product or norm has the same bits on any
/// machine, thread or chunking.
/// </summary>
public static class FixedOrder
{
    public const int Lanes = 8;

    /// <summary>Σ x[k]·y[k] in the fixed lane order.</summary>
    public static double Dot(ReadOnlySpan<double> x, ReadOnlySpan<double> y) => Dot(x, y, SimdPath.Auto);

    internal static double Dot(ReadOnlySpan<double> x, ReadOnlySpan<double> y, SimdPath path)
    {
        if (x.Length != y.Length) throw new ArgumentException("vectors differ in length");
        Span<double> lanes = stackalloc double[Lanes];
        lanes.Clear();
        int body = x.Length / Lanes * Lanes;
        ref double a = ref MemoryMarshal.GetReference(x);
        ref double b = ref MemoryMarshal.GetReference(y);
        switch (Resolve(path))
        {
            case SimdPath.Vector512:
                {
                    var acc = Vector512<double>.Zero;
                    for (int k = 0; k < body; k += Lanes)
                        acc += Vector512.LoadUnsafe(ref a, (nuint)k) * Vector512.LoadUnsafe(ref b, (nuint)k);
                    acc.StoreUnsafe(ref MemoryMarshal.GetReference(lanes));
                    break;
                }
            case SimdPath.Vector256:
                {
                    Vector256<double> lo = Vector256<double>.Zero, hi = Vector256<double>.Zero;
                    for (int k = 0; k < body; k += Lanes)
                    {
                        lo += Vector256.LoadUnsafe(ref a, (nuint)k) * Vector256.LoadUnsafe(ref b, (nuint)k);
                        hi += Vector256.LoadUnsafe(ref a, (nuint)(k + 4)) * Vector256.LoadUnsafe(ref b, (nuint)(k + 4));
                    }
                    lo.StoreUnsafe(ref MemoryMarshal.GetReference(lanes));
                    hi.StoreUnsafe(ref MemoryMarshal.GetReference(lanes), 4);
                    break;
                }
            default:
                for (int k = 0; k < body; k += Lanes)
                    for (int l = 0; l < Lanes; l++) lanes[l] += x[k + l] * y[k + l];
                break;
        }
        for (int k = body; k < x.Length; k++) lanes[k - body] += x[k] * y[k];
        return Combine(lanes);
    }

    /// <summary>The eight lanes in their fixed order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Combine(ReadOnlySpan<double> lanes) =>
        ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));

    internal static SimdPath Resolve(SimdPath path) => path switch
    {
        SimdPath.Auto when Vector512.IsHardwareAccelerated => SimdPath.Vector512,
        SimdPath.Auto when Vector256.IsHardwareAccelerated => SimdPath.Vector256,
        SimdPath.Auto => SimdPath.Scalar,
        _ => path,
    };
}
