using System.Numerics;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Merging;

/// <summary>
/// The correctly rounded mean computed exactly with big integers (every float is a dyadic rational), independent of
/// the engine's float64 path: the reference the merge is judged against.
/// </summary>
public static class ExactReference
{
    private const int Scale = 200; // 2^-200 is below the smallest f32/bf16/f16 value, so every such value is an integer at this scale

    public static BigInteger Scaled(double v)
    {
        long bits = BitConverter.DoubleToInt64Bits(v);
        bool negative = bits < 0;
        int exponent = (int)((bits >> 52) & 0x7FF);
        long mantissa = bits & 0xFFFFFFFFFFFFFL;
        if (exponent != 0) mantissa |= 1L << 52; else exponent = 1;
        int shift = exponent - 1075 + Scale;
        if (shift < 0 && (mantissa & ((1L << -shift) - 1)) != 0) throw new ArgumentOutOfRangeException(nameof(v), "value finer than 2^-200");
        var scaled = shift >= 0 ? new BigInteger(mantissa) << shift : new BigInteger(mantissa >> -shift);
        return negative ? -scaled : scaled;
    }

    /// <summary>The value of type <paramref name="type"/> nearest to Σvalues / count (ties to even), as its bit pattern.</summary>
    public static ulong RoundedMean(ReadOnlySpan<double> values, double divisor, DType type)
    {
        BigInteger sum = BigInteger.Zero;
        foreach (double v in values) sum += Scaled(v);
        var d = Scaled(divisor); // exact mean = sum / d
        double approx = Math.ScaleB((double)((sum << 200) / d), -200);
        ulong candidate = Encode(approx, type);
        ulong best = candidate;
        BigInteger bestError = BigInteger.Abs(sum * (BigInteger.One << Scale) - Scaled(Decode(candidate, type)) * d);
        foreach (long delta in new long[] { -2, -1, 1, 2 })
        {
            ulong other = Step(candidate, delta, type);
            double value = Decode(other, type);
            if (!double.IsFinite(value)) continue;
            var error = BigInteger.Abs(sum * (BigInteger.One << Scale) - Scaled(value) * d);
            int cmp = error.CompareTo(bestError);
            if (cmp < 0 || (cmp == 0 && (other & 1) == 0 && (best & 1) == 1)) (best, bestError) = (other, error);
        }
        return best;
    }

    /// <summary>Distance in units in the last place between two bit patterns of the same sign.</summary>
    public static long Ulps(ulong a, ulong b, DType type) => Math.Abs(Ordered(a, type) - Ordered(b, type));

    private static long Ordered(ulong bits, DType type)
    {
        int width = type.Size() * 8;
        ulong sign = 1UL << (width - 1);
        return (bits & sign) != 0 ? -(long)(bits & (sign - 1)) : (long)bits;
    }

    private static ulong Step(ulong bits, long delta, DType type) => (ulong)(Ordered(bits, type) + delta) is var o && (long)o < 0
        ? (1UL << (type.Size() * 8 - 1)) | (ulong)(-(long)o)
        : (ulong)(Ordered(bits, type) + delta);

    public static ulong Encode(double v, DType type) => type switch
    {
        DType.F16 => BitConverter.HalfToUInt16Bits((Half)v),
        DType.BF16 => (ulong)(BitConverter.SingleToUInt32Bits((float)v) >> 16),
        DType.F32 => BitConverter.SingleToUInt32Bits((float)v),
        DType.F64 => BitConverter.DoubleToUInt64Bits(v),
        _ => throw new NotSupportedException(),
    };

    public static double Decode(ulong bits, DType type) => type switch
    {
        DType.F16 => (double)BitConverter.UInt16BitsToHalf((ushort)bits),
        DType.BF16 => BitConverter.Int32BitsToSingle((int)(bits << 16)),
        DType.F32 => BitConverter.UInt32BitsToSingle((uint)bits),
        DType.F64 => BitConverter.UInt64BitsToDouble(bits),
        _ => throw new NotSupportedException(),
    };

    public static ulong Bits(ReadOnlySpan<byte> raw, int index, DType type) => type.Size() switch
    {
        2 => BitConverter.ToUInt16(raw.Slice(index * 2, 2)),
        4 => BitConverter.ToUInt32(raw.Slice(index * 4, 4)),
        8 => BitConverter.ToUInt64(raw.Slice(index * 8, 8)),
        _ => throw new NotSupportedException(),
    };
}
