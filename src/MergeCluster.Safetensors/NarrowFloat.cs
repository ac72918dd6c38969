using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace MergeCluster.Safetensors;

/// <summary>
/// A float format narrower than float32 (F16, BF16, F8), described by its bit fields; the JIT specialises every
/// generic conversion per format, so these properties fold to constants.
/// </summary>
internal interface INarrowFloatFormat
{
    static abstract int ExponentBits { get; }
    static abstract int MantissaBits { get; }
    static abstract int Bias { get; }

    /// <summary>
    /// False for E4M3FN: its all-ones exponent still holds finite values, only S.1111.111 is NaN, and a value too
    /// large for it (or an infinity) becomes NaN, as PyTorch's <c>float8_e4m3fn</c> conversion does.
    /// </summary>
    static abstract bool HasInfinity { get; }
}

internal readonly struct Float16Format : INarrowFloatFormat
{
    public static int ExponentBits => 5;
    public static int MantissaBits => 10;
    public static int Bias => 15;
    public static bool HasInfinity => true;
}

internal readonly struct BFloat16Format : INarrowFloatFormat
{
    public static int ExponentBits => 8;
    public static int MantissaBits => 7;
    public static int Bias => 127;
    public static bool HasInfinity => true;
}

/// <summary>OCP FP8 E4M3 as PyTorch's <c>float8_e4m3fn</c>: bias 7, max finite 448, no infinities.</summary>
internal readonly struct Float8E4M3Format : INarrowFloatFormat
{
    public static int ExponentBits => 4;
    public static int MantissaBits => 3;
    public static int Bias => 7;
    public static bool HasInfinity => false;
}

/// <summary>OCP FP8 E5M2 (<c>float8_e5m2</c>): the top byte of an F16, with infinities, max finite 57344.</summary>
internal readonly struct Float8E5M2Format : INarrowFloatFormat
{
    public static int ExponentBits => 5;
    public static int MantissaBits => 2;
    public static int Bias => 15;
    public static bool HasInfinity => true;
}

/// <summary>
/// Bit-level conversions between a narrow float format and float32, in scalar and in <see cref="Vector{T}"/> form
/// with the same arithmetic. Narrowing from float64 first rounds to float32 with round-to-odd, which carries the
/// sticky bit: float32 keeps at least two more bits than any target, so the final round to nearest even is the
/// same as rounding the float64 once (Boldo and Melquiond, "Emulation of FMA and correctly rounded sums").
/// </summary>
internal static class NarrowFloat
{
    private const uint SingleSign = 0x8000_0000;
    private const uint SingleInfinity = 0x7F80_0000;
    private const uint SingleQuietNaN = 0x7FC0_0000;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Width<F>() where F : INarrowFloatFormat => F.ExponentBits + F.MantissaBits;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint MagnitudeMask<F>() where F : INarrowFloatFormat => (1u << Width<F>()) - 1;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint ExponentMask<F>() where F : INarrowFloatFormat => ((1u << F.ExponentBits) - 1) << F.MantissaBits;
    /// <summary>Bits dropped from a float32 mantissa.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Shift<F>() where F : INarrowFloatFormat => 23 - F.MantissaBits;
    /// <summary>float32 bits of the smallest normal value of the format.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint MinNormal<F>() where F : INarrowFloatFormat => (uint)(127 - F.Bias + 1) << 23;
    /// <summary>float32 bits of the power of two whose ulp is the format's smallest subnormal.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint SubnormalMagic<F>() where F : INarrowFloatFormat => (uint)(127 - F.Bias + Shift<F>() + 1) << 23;

    /// <summary>float32 bits from which on a value no longer rounds to a finite value of the format.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint Overflow<F>() where F : INarrowFloatFormat => F.HasInfinity
        ? (uint)(127 + (1 << F.ExponentBits) - 1 - F.Bias) << 23                          // 2^(emax+1)
        : ((uint)(127 + (1 << F.ExponentBits) - 1 - F.Bias) << 23) | (((1u << F.MantissaBits) - 1) << Shift<F>()); // the NaN pattern's value (480 for E4M3FN)

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint NaNCode<F>(uint magnitude) where F : INarrowFloatFormat => F.HasInfinity
        ? ((magnitude >> Shift<F>()) | (1u << (F.MantissaBits - 1))) & MagnitudeMask<F>() // quiet, keeping the payload's top bits
        : MagnitudeMask<F>();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint OverflowCode<F>() where F : INarrowFloatFormat => F.HasInfinity ? ExponentMask<F>() : MagnitudeMask<F>();

    /// <summary>BF16 is the top half of a float32, so decoding it is a shift; the general steps give the same bits, slower.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool IsBFloat16<F>() where F : INarrowFloatFormat => F.ExponentBits == 8;

    // ---- scalar ----

    /// <summary>Decodes one code (sign in bit ExponentBits + MantissaBits) to float32; exact.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Decode<F>(uint code) where F : INarrowFloatFormat
    {
        if (IsBFloat16<F>()) return BitConverter.UInt32BitsToSingle(code << 16);
        uint sign = (code >> Width<F>()) << 31;
        uint magnitude = code & MagnitudeMask<F>();
        uint exponent = magnitude & ExponentMask<F>();
        uint bits = (magnitude << Shift<F>()) + ((uint)(127 - F.Bias) << 23);
        if (exponent == 0)
            // Subnormal: place the mantissa under the smallest normal's exponent and subtract that normal; no
            // arithmetic touches a float32 subnormal, which would be slow on x86.
            bits = BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle((magnitude << Shift<F>()) + MinNormal<F>())
                                                   - BitConverter.UInt32BitsToSingle(MinNormal<F>()));
        if (F.HasInfinity ? exponent == ExponentMask<F>() : magnitude == MagnitudeMask<F>())
            bits = F.HasInfinity ? SingleInfinity | (magnitude << Shift<F>()) : SingleQuietNaN;
        return BitConverter.UInt32BitsToSingle(bits | sign);
    }

    /// <summary>Encodes one float32, rounding to nearest even.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Encode<F>(float value) where F : INarrowFloatFormat
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        uint sign = u & SingleSign;
        u ^= sign;
        uint code;
        if (u >= Overflow<F>())
            code = u > SingleInfinity ? NaNCode<F>(u) : OverflowCode<F>();
        else if (u < MinNormal<F>())
            // Adding a power of two whose ulp is the smallest subnormal makes the FPU round the mantissa for us.
            code = BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(u) + BitConverter.UInt32BitsToSingle(SubnormalMagic<F>())) - SubnormalMagic<F>();
        else
            code = RoundNormal<F>(u);
        return code | (sign >> (31 - Width<F>()));
    }

    /// <summary>Rebiases the exponent and rounds the mantissa to nearest even; a carry may step into the next binade or to Inf.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint RoundNormal<F>(uint u) where F : INarrowFloatFormat
    {
        uint odd = (u >> Shift<F>()) & 1;
        return (u + unchecked((uint)((F.Bias - 127) << 23)) + ((1u << (Shift<F>() - 1)) - 1) + odd) >> Shift<F>();
    }

    /// <summary>Encodes one float64, rounding once to nearest even.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Encode<F>(double value) where F : INarrowFloatFormat => Encode<F>(RoundToOdd(value));

    /// <summary>float64 to float32 rounding toward zero, then setting the last bit if anything was lost.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float RoundToOdd(double value)
    {
        float nearest = (float)value;
        double back = nearest;
        if (back == value || double.IsNaN(value)) return nearest;
        uint bits = BitConverter.SingleToUInt32Bits(nearest);
        if (Math.Abs(back) > Math.Abs(value)) bits--;
        return BitConverter.UInt32BitsToSingle(bits | 1);
    }

    // ---- vector: the same steps lane-wise, with selects in place of branches ----

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<float> Decode<F>(Vector<uint> code) where F : INarrowFloatFormat
    {
        if (IsBFloat16<F>()) return Vector.AsVectorSingle(Vector.ShiftLeft(code, 16));
        var sign = Vector.ShiftLeft(Vector.ShiftRightLogical(code, Width<F>()), 31);
        var magnitude = code & new Vector<uint>(MagnitudeMask<F>());
        var exponent = magnitude & new Vector<uint>(ExponentMask<F>());
        var shifted = Vector.ShiftLeft(magnitude, Shift<F>());
        var normal = shifted + new Vector<uint>((uint)(127 - F.Bias) << 23);
        var subnormal = Vector.AsVectorUInt32(Vector.AsVectorSingle(shifted + new Vector<uint>(MinNormal<F>()))
                                             - new Vector<float>(BitConverter.UInt32BitsToSingle(MinNormal<F>())));
        var bits = Vector.ConditionalSelect(Vector.Equals(exponent, Vector<uint>.Zero), subnormal, normal);
        bits = F.HasInfinity
            ? Vector.ConditionalSelect(Vector.Equals(exponent, new Vector<uint>(ExponentMask<F>())), shifted | new Vector<uint>(SingleInfinity), bits)
            : Vector.ConditionalSelect(Vector.Equals(magnitude, new Vector<uint>(MagnitudeMask<F>())), new Vector<uint>(SingleQuietNaN), bits);
        return Vector.AsVectorSingle(bits | sign);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<uint> Encode<F>(Vector<float> value) where F : INarrowFloatFormat
    {
        var all = Vector.AsVectorUInt32(value);
        var sign = all & new Vector<uint>(SingleSign);
        var u = all ^ sign;
        // u < 2^31, so signed compares are exact and cheaper than unsigned ones on x86.
        var ui = Vector.AsVectorInt32(u);
        var odd = Vector.ShiftRightLogical(u, Shift<F>()) & Vector<uint>.One;
        var normal = Vector.ShiftRightLogical(u + new Vector<uint>(unchecked((uint)((F.Bias - 127) << 23)) + ((1u << (Shift<F>() - 1)) - 1)) + odd, Shift<F>());
        var magic = new Vector<float>(BitConverter.UInt32BitsToSingle(SubnormalMagic<F>()));
        var subnormal = Vector.AsVectorUInt32(Vector.AsVectorSingle(u) + magic) - new Vector<uint>(SubnormalMagic<F>());
        var code = Vector.ConditionalSelect(Vector.AsVectorUInt32(Vector.LessThan(ui, new Vector<int>((int)MinNormal<F>()))), subnormal, normal);
        var special = F.HasInfinity
            ? Vector.ConditionalSelect(Vector.AsVectorUInt32(Vector.GreaterThan(ui, new Vector<int>((int)SingleInfinity))),
                (Vector.ShiftRightLogical(u, Shift<F>()) | new Vector<uint>(1u << (F.MantissaBits - 1))) & new Vector<uint>(MagnitudeMask<F>()),
                new Vector<uint>(OverflowCode<F>()))
            : new Vector<uint>(MagnitudeMask<F>());
        code = Vector.ConditionalSelect(Vector.AsVectorUInt32(Vector.GreaterThanOrEqual(ui, new Vector<int>((int)Overflow<F>()))), special, code);
        return code | Vector.ShiftRightLogical(sign, 31 - Width<F>());
    }

    /// <summary>
    /// Encodes float64 lanes straight from their bits, rounding once to nearest even: the float32 encoder's steps on
    /// 64-bit lanes. It gives the same codes as the scalar reference (round to odd, then encode) since both are the one
    /// correct rounding of the double, NaN payloads included (the top mantissa bits, quieted); it skips the detour
    /// through float32, which costs a narrow, a widen and two compares per lane.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<ulong> Encode<F>(Vector<double> value) where F : INarrowFloatFormat
    {
        const ulong doubleSign = 0x8000_0000_0000_0000, doubleInfinity = 0x7FF0_0000_0000_0000;
        int shift = 52 - F.MantissaBits;
        ulong minNormal = (ulong)(1023 - F.Bias + 1) << 52;
        ulong magicBits = (ulong)(1023 - F.Bias + shift + 1) << 52;
        ulong overflow = F.HasInfinity
            ? (ulong)(1023 + (1 << F.ExponentBits) - 1 - F.Bias) << 52
            : ((ulong)(1023 + (1 << F.ExponentBits) - 1 - F.Bias) << 52) | (((1UL << F.MantissaBits) - 1) << shift);
        var all = Vector.AsVectorUInt64(value);
        var sign = all & new Vector<ulong>(doubleSign);
        var u = all ^ sign;
        // u < 2^63, so signed compares are exact.
        var ui = Vector.AsVectorInt64(u);
        var odd = Vector.ShiftRightLogical(u, shift) & Vector<ulong>.One;
        var normal = Vector.ShiftRightLogical(u + new Vector<ulong>(unchecked((ulong)((long)(F.Bias - 1023) << 52)) + ((1UL << (shift - 1)) - 1)) + odd, shift);
        // Below the smallest normal, adding a power of two whose ulp is the smallest subnormal rounds in the FPU.
        var magic = new Vector<double>(BitConverter.UInt64BitsToDouble(magicBits));
        var subnormal = Vector.AsVectorUInt64(Vector.AsVectorDouble(u) + magic) - new Vector<ulong>(magicBits);
        var code = Vector.ConditionalSelect(Vector.AsVectorUInt64(Vector.LessThan(ui, new Vector<long>((long)minNormal))), subnormal, normal);
        var special = F.HasInfinity
            ? Vector.ConditionalSelect(Vector.AsVectorUInt64(Vector.GreaterThan(ui, new Vector<long>((long)doubleInfinity))),
                (Vector.ShiftRightLogical(u, shift) | new Vector<ulong>(1UL << (F.MantissaBits - 1))) & new Vector<ulong>(MagnitudeMask<F>()),
                new Vector<ulong>(OverflowCode<F>()))
            : new Vector<ulong>(MagnitudeMask<F>());
        code = Vector.ConditionalSelect(Vector.AsVectorUInt64(Vector.GreaterThanOrEqual(ui, new Vector<long>((long)overflow))), special, code);
        return code | Vector.ShiftRightLogical(sign, 63 - Width<F>());
    }

    // ---- Vector512: the same steps as the Vector<T> forms above (which are 256 bits wide on x64), for the merge's
    // hot kernels on AVX-512 machines, where they halve the instructions per element. Keep the two in step.

    /// <summary>
    /// True when every 16-bit code is a normal number (no zero, subnormal, infinity or NaN), which is nearly every
    /// vector of trained weights; <see cref="DecodeNormal{F}"/> then decodes them in a third of the instructions.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool AllNormal<F>(Vector512<ushort> codes) where F : INarrowFloatFormat =>
        Vector512.LessThanAll((codes & Vector512.Create((ushort)MagnitudeMask<F>())) - Vector512.Create((ushort)(1 << F.MantissaBits)),
                              Vector512.Create((ushort)(ExponentMask<F>() - (1u << F.MantissaBits))));

    /// <summary>
    /// Decodes normal 16-bit codes only: shifted up to the top of the lane, an arithmetic shift puts the exponent and
    /// mantissa in float32's places while copying the sign into the bits a float32 exponent has to spare, which the
    /// mask clears; adding the bias difference finishes the exponent (it cannot carry into the sign).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> DecodeNormal<F>(Vector512<uint> code) where F : INarrowFloatFormat
    {
        const int spare = 8; // float32 exponent bits
        var aligned = Vector512.ShiftRightArithmetic(Vector512.ShiftLeft(code, 16).AsInt32(), spare - F.ExponentBits).AsUInt32();
        uint copies = ((1u << (spare - F.ExponentBits)) - 1) << (31 - (spare - F.ExponentBits));
        return ((aligned & Vector512.Create(~copies)) + Vector512.Create((uint)(127 - F.Bias) << 23)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Decode<F>(Vector512<uint> code) where F : INarrowFloatFormat
    {
        if (IsBFloat16<F>()) return Vector512.ShiftLeft(code, 16).AsSingle();
        var sign = Vector512.ShiftLeft(Vector512.ShiftRightLogical(code, Width<F>()), 31);
        var magnitude = code & Vector512.Create(MagnitudeMask<F>());
        var exponent = magnitude & Vector512.Create(ExponentMask<F>());
        var shifted = Vector512.ShiftLeft(magnitude, Shift<F>());
        var normal = shifted + Vector512.Create((uint)(127 - F.Bias) << 23);
        var subnormal = ((shifted + Vector512.Create(MinNormal<F>())).AsSingle() - Vector512.Create(BitConverter.UInt32BitsToSingle(MinNormal<F>()))).AsUInt32();
        var bits = Vector512.ConditionalSelect(Vector512.Equals(exponent, Vector512<uint>.Zero), subnormal, normal);
        bits = F.HasInfinity
            ? Vector512.ConditionalSelect(Vector512.Equals(exponent, Vector512.Create(ExponentMask<F>())), shifted | Vector512.Create(SingleInfinity), bits)
            : Vector512.ConditionalSelect(Vector512.Equals(magnitude, Vector512.Create(MagnitudeMask<F>())), Vector512.Create(SingleQuietNaN), bits);
        return (bits | sign).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<ulong> Encode<F>(Vector512<double> value) where F : INarrowFloatFormat
    {
        const ulong doubleSign = 0x8000_0000_0000_0000, doubleInfinity = 0x7FF0_0000_0000_0000;
        int shift = 52 - F.MantissaBits;
        ulong minNormal = (ulong)(1023 - F.Bias + 1) << 52;
        ulong magicBits = (ulong)(1023 - F.Bias + shift + 1) << 52;
        ulong overflow = F.HasInfinity
            ? (ulong)(1023 + (1 << F.ExponentBits) - 1 - F.Bias) << 52
            : ((ulong)(1023 + (1 << F.ExponentBits) - 1 - F.Bias) << 52) | (((1UL << F.MantissaBits) - 1) << shift);
        var all = value.AsUInt64();
        var sign = all & Vector512.Create(doubleSign);
        var u = all ^ sign;
        var ui = u.AsInt64();
        var odd = Vector512.ShiftRightLogical(u, shift) & Vector512<ulong>.One;
        var normal = Vector512.ShiftRightLogical(u + Vector512.Create(unchecked((ulong)((long)(F.Bias - 1023) << 52)) + ((1UL << (shift - 1)) - 1)) + odd, shift);
        var subnormal = (u.AsDouble() + Vector512.Create(BitConverter.UInt64BitsToDouble(magicBits))).AsUInt64() - Vector512.Create(magicBits);
        var code = Vector512.ConditionalSelect(Vector512.LessThan(ui, Vector512.Create((long)minNormal)).AsUInt64(), subnormal, normal);
        var special = F.HasInfinity
            ? Vector512.ConditionalSelect(Vector512.GreaterThan(ui, Vector512.Create((long)doubleInfinity)).AsUInt64(),
                (Vector512.ShiftRightLogical(u, shift) | Vector512.Create(1UL << (F.MantissaBits - 1))) & Vector512.Create((ulong)MagnitudeMask<F>()),
                Vector512.Create((ulong)OverflowCode<F>()))
            : Vector512.Create((ulong)MagnitudeMask<F>());
        code = Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(ui, Vector512.Create((long)overflow)).AsUInt64(), special, code);
        return code | Vector512.ShiftRightLogical(sign, 63 - Width<F>());
    }

    /// <summary>Two float64 vectors to one float32 vector, rounding to odd (see the class summary).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<float> RoundToOdd(Vector<double> lower, Vector<double> upper)
    {
        var nearest = Vector.Narrow(lower, upper);
        Vector.Widen(nearest, out var backLower, out var backUpper);
        // NaN lanes compare unequal, so they get the low bit set too, and stay NaN.
        var inexact = Vector.Narrow(~Vector.Equals(backLower, lower), ~Vector.Equals(backUpper, upper));
        var away = Vector.Narrow(Vector.GreaterThan(Vector.Abs(backLower), Vector.Abs(lower)), Vector.GreaterThan(Vector.Abs(backUpper), Vector.Abs(upper)));
        // Mask lanes are -1: adding steps the magnitude one ulp back toward zero, then the sticky bit goes in.
        var bits = Vector.AsVectorInt32(nearest) + away;
        return Vector.AsVectorSingle(bits | (inexact & Vector<int>.One));
    }
}
