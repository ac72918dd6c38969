using System.Diagnostics;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace MergeCluster.Safetensors;

public static partial class DTypeConvert
{
    /// <summary>
    /// NaN and ±Inf among stored elements, counted from their bits (all-ones exponent; F8_E4M3 has only NaN): no
    /// decoding, and a vector at a time where none is found, which is almost always.
    /// </summary>
    public static long CountNonFinite(DType type, ReadOnlySpan<byte> bytes) => type switch
    {
        DType.F16 => CountMasked<ushort>(MemoryMarshal.Cast<byte, ushort>(bytes), 0x7C00),
        DType.BF16 => CountMasked<ushort>(MemoryMarshal.Cast<byte, ushort>(bytes), 0x7F80),
        DType.F32 => CountMasked<uint>(MemoryMarshal.Cast<byte, uint>(bytes), 0x7F80_0000),
        DType.F64 => CountMasked<ulong>(MemoryMarshal.Cast<byte, ulong>(bytes), 0x7FF0_0000_0000_0000),
        DType.F8_E4M3 => CountMasked<byte>(bytes, 0x7F),
        DType.F8_E5M2 => CountMasked<byte>(bytes, 0x7C),
        _ => 0,
    };

    /// <summary>
    /// Whether every value rounds to a finite <paramref name="type"/> value: false for NaN, ±Inf, and magnitudes that
    /// overflow when rounded (65520 and above for F16). One compare per element on data the caller has in cache.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // per block of every tensor: tier 0 costs more than the check
    public static bool RoundsFinite(ReadOnlySpan<double> values, DType type)
    {
        double limit = type switch
        {
            DType.F16 => 65520.0,
            DType.BF16 => 3.39617752923046e38,           // (2 - 2^-8) · 2^127: halfway past the largest finite BF16
            DType.F32 => 3.4028235677973366e38,          // (2 - 2^-24) · 2^127
            _ => double.PositiveInfinity,
        };
        var limits = new Vector<double>(limit);
        int i = 0;
        for (; i <= values.Length - Vector<double>.Count; i += Vector<double>.Count)
            if (!Vector.LessThanAll(Vector.Abs(new Vector<double>(values[i..])), limits)) return false;
        for (; i < values.Length; i++)
            if (!(Math.Abs(values[i]) < limit)) return false;
        return true;
    }

    /// <summary>
    /// <see cref="RoundsFinite"/> for <paramref name="values"/> already encoded as <paramref name="encoded"/>: read off
    /// the codes where the format has an infinity, since a value that overflows rounds to it (a quarter of the
    /// float64s' bytes for a 16-bit output); from the values for the 8-bit formats.
    /// </summary>
    public static bool EncodedFinite(ReadOnlySpan<double> values, DType type, ReadOnlySpan<byte> encoded)
    {
        Debug.Assert(encoded.Length == values.Length * type.Size());
        return type is DType.F16 or DType.BF16 or DType.F32 or DType.F64 ? CountNonFinite(type, encoded) == 0 : RoundsFinite(values, type);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static long CountMasked<T>(ReadOnlySpan<T> values, T mask) where T : unmanaged, IBinaryInteger<T>
    {
        var masks = new Vector<T>(mask);
        long count = 0;
        int i = 0;
        for (; i <= values.Length - Vector<T>.Count; i += Vector<T>.Count)
        {
            if (!Vector.EqualsAny(new Vector<T>(values[i..]) & masks, masks)) continue;
            for (int j = i; j < i + Vector<T>.Count; j++) if ((values[j] & mask) == mask) count++;
        }
        for (; i < values.Length; i++) if ((values[i] & mask) == mask) count++;
        return count;
    }
}
