using System.Diagnostics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace MergeCluster.Safetensors;

/// <summary>
/// Conversions between stored element bytes and float32/float64, rounding to nearest even and keeping NaN and Inf.
/// Widening is exact; narrowing rounds once. F8_E4M3 is PyTorch's <c>float8_e4m3fn</c>: it has no Inf, so Inf and
/// values too large for it (magnitude above 464, which would round past 448) become NaN, as in PyTorch.
/// Spans are little-endian element bytes, as in a safetensors file; nothing is allocated per call.
/// </summary>
public static partial class DTypeConvert
{
    /// <summary>Decodes <paramref name="source"/> (elements of <paramref name="type"/>) into <paramref name="dest"/>.</summary>
    public static void ToFloat64(DType type, ReadOnlySpan<byte> source, Span<double> dest)
    {
        int n = CheckLengths(type, source.Length, dest.Length);
        switch (type)
        {
            case DType.F64: MemoryMarshal.Cast<byte, double>(source)[..n].CopyTo(dest); break;
            case DType.F32: TensorPrimitives.ConvertChecked<float, double>(MemoryMarshal.Cast<byte, float>(source), dest); break;
            case DType.F16: Decode16<Float16Format, double>(MemoryMarshal.Cast<byte, ushort>(source), dest); break;
            case DType.BF16: Decode16<BFloat16Format, double>(MemoryMarshal.Cast<byte, ushort>(source), dest); break;
            case DType.F8_E4M3: Decode8<Float8E4M3Format, double>(source, dest); break;
            case DType.F8_E5M2: Decode8<Float8E5M2Format, double>(source, dest); break;
            default: throw NotFloat(type);
        }
    }

    /// <summary>
    /// acc[i] += coefficient · decode(source[i]): the merge's per-source step, decoding and accumulating in one pass.
    /// The product and the sum are rounded separately (no FMA); with coefficient 1 the product is exact, so this is
    /// acc[i] + decode(source[i]) bit for bit and needs no separate path.
    /// </summary>
    public static void AccumulateFloat64(DType type, ReadOnlySpan<byte> source, double coefficient, Span<double> acc)
    {
        int n = CheckLengths(type, source.Length, acc.Length);
        switch (type)
        {
            case DType.F64: AccumulateWide(MemoryMarshal.Cast<byte, double>(source)[..n], coefficient, acc); break;
            case DType.F32: AccumulateWide(MemoryMarshal.Cast<byte, float>(source)[..n], coefficient, acc); break;
            case DType.F16: Accumulate16<Float16Format>(MemoryMarshal.Cast<byte, ushort>(source), coefficient, acc); break;
            case DType.BF16: Accumulate16<BFloat16Format>(MemoryMarshal.Cast<byte, ushort>(source), coefficient, acc); break;
            case DType.F8_E4M3: Accumulate8<Float8E4M3Format>(source, coefficient, acc); break;
            case DType.F8_E5M2: Accumulate8<Float8E5M2Format>(source, coefficient, acc); break;
            default: throw NotFloat(type);
        }
    }

    /// <summary>
    /// acc[i] = Σₜ coefficients[t] · decode(sources[t][i]) for <paramref name="type"/> elements, terms in order from
    /// +0.0: bit for bit what clearing acc and calling <see cref="AccumulateFloat64"/> once per term gives, with each
    /// element's running sum kept in a register across the terms instead of stored and loaded again per term. Each
    /// source points at acc.Length elements the caller keeps mapped for the call.
    /// </summary>
    public static unsafe void SumFloat64(DType type, ReadOnlySpan<nint> sources, ReadOnlySpan<double> coefficients, Span<double> acc)
    {
        Debug.Assert(sources.Length == coefficients.Length && sources.Length > 0);
        int done = type switch
        {
            DType.F16 => Sum16<Float16Format>(sources, coefficients, acc),
            DType.BF16 => Sum16<BFloat16Format>(sources, coefficients, acc),
            _ => 0,
        };
        if (done == acc.Length) return;
        int size = type.Size();
        var rest = acc[done..];
        rest.Clear();
        for (int t = 0; t < sources.Length; t++)
            AccumulateFloat64(type, new ReadOnlySpan<byte>((byte*)sources[t] + (long)done * size, rest.Length * size), coefficients[t], rest);
    }

    /// <summary>Decodes <paramref name="source"/> into float32; from F64 this rounds to nearest even.</summary>
    public static void ToFloat32(DType type, ReadOnlySpan<byte> source, Span<float> dest)
    {
        int n = CheckLengths(type, source.Length, dest.Length);
        switch (type)
        {
            case DType.F32: MemoryMarshal.Cast<byte, float>(source)[..n].CopyTo(dest); break;
            case DType.F64: TensorPrimitives.ConvertChecked<double, float>(MemoryMarshal.Cast<byte, double>(source), dest); break;
            case DType.F16: TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(source), dest); break;
            case DType.BF16: Decode16<BFloat16Format, float>(MemoryMarshal.Cast<byte, ushort>(source), dest); break;
            case DType.F8_E4M3: Decode8<Float8E4M3Format, float>(source, dest); break;
            case DType.F8_E5M2: Decode8<Float8E5M2Format, float>(source, dest); break;
            default: throw NotFloat(type);
        }
    }

    /// <summary>Encodes float64 values as <paramref name="type"/>, rounding once to nearest even.</summary>
    public static void FromFloat64(ReadOnlySpan<double> source, DType type, Span<byte> dest)
    {
        int n = CheckLengths(type, dest.Length, source.Length);
        switch (type)
        {
            case DType.F64: source[..n].CopyTo(MemoryMarshal.Cast<byte, double>(dest)); break;
            case DType.F32: TensorPrimitives.ConvertChecked<double, float>(source, MemoryMarshal.Cast<byte, float>(dest)); break;
            case DType.F16: Encode16<Float16Format, double>(source, MemoryMarshal.Cast<byte, ushort>(dest)); break;
            case DType.BF16: Encode16<BFloat16Format, double>(source, MemoryMarshal.Cast<byte, ushort>(dest)); break;
            case DType.F8_E4M3: Encode8<Float8E4M3Format, double>(source, dest); break;
            case DType.F8_E5M2: Encode8<Float8E5M2Format, double>(source, dest); break;
            default: throw NotFloat(type);
        }
    }

    /// <summary>Encodes float32 values as <paramref name="type"/>, rounding once to nearest even.</summary>
    public static void FromFloat32(ReadOnlySpan<float> source, DType type, Span<byte> dest)
    {
        int n = CheckLengths(type, dest.Length, source.Length);
        switch (type)
        {
            case DType.F32: source[..n].CopyTo(MemoryMarshal.Cast<byte, float>(dest)); break;
            case DType.F64: TensorPrimitives.ConvertChecked<float, double>(source, MemoryMarshal.Cast<byte, double>(dest)); break;
            case DType.F16: TensorPrimitives.ConvertToHalf(source, MemoryMarshal.Cast<byte, Half>(dest)); break;
            case DType.BF16: Encode16<BFloat16Format, float>(source, MemoryMarshal.Cast<byte, ushort>(dest)); break;
            case DType.F8_E4M3: Encode8<Float8E4M3Format, float>(source, dest); break;
            case DType.F8_E5M2: Encode8<Float8E5M2Format, float>(source, dest); break;
            default: throw NotFloat(type);
        }
    }

    /// <summary>Decodes one element given as its little-endian bits (the low <c>Size</c> bytes); the scalar reference.</summary>
    public static double ToFloat64(DType type, ulong bits) => type switch
    {
        DType.F64 => BitConverter.UInt64BitsToDouble(bits),
        DType.F32 => BitConverter.UInt32BitsToSingle((uint)bits),
        DType.F16 => NarrowFloat.Decode<Float16Format>((uint)bits & 0xFFFF),
        DType.BF16 => NarrowFloat.Decode<BFloat16Format>((uint)bits & 0xFFFF),
        DType.F8_E4M3 => NarrowFloat.Decode<Float8E4M3Format>((uint)bits & 0xFF),
        DType.F8_E5M2 => NarrowFloat.Decode<Float8E5M2Format>((uint)bits & 0xFF),
        _ => throw NotFloat(type),
    };

    /// <summary>Encodes one float64 as the bits of <paramref name="type"/>, rounding once; the scalar reference.</summary>
    public static ulong FromFloat64(double value, DType type) => type switch
    {
        DType.F64 => BitConverter.DoubleToUInt64Bits(value),
        DType.F32 => BitConverter.SingleToUInt32Bits((float)value),
        DType.F16 => NarrowFloat.Encode<Float16Format>(value),
        DType.BF16 => NarrowFloat.Encode<BFloat16Format>(value),
        DType.F8_E4M3 => NarrowFloat.Encode<Float8E4M3Format>(value),
        DType.F8_E5M2 => NarrowFloat.Encode<Float8E5M2Format>(value),
        _ => throw NotFloat(type),
    };

    /// <summary>Encodes one float32 as the bits of <paramref name="type"/>, rounding to nearest even; the scalar reference.</summary>
    public static ulong FromFloat32(float value, DType type) => type switch
    {
        DType.F64 => BitConverter.DoubleToUInt64Bits(value),
        DType.F32 => BitConverter.SingleToUInt32Bits(value),
        DType.F16 => NarrowFloat.Encode<Float16Format>(value),
        DType.BF16 => NarrowFloat.Encode<BFloat16Format>(value),
        DType.F8_E4M3 => NarrowFloat.Encode<Float8E4M3Format>(value),
        DType.F8_E5M2 => NarrowFloat.Encode<Float8E5M2Format>(value),
        _ => throw NotFloat(type),
    };

    /// <summary>Element count, after checking that byte and element spans agree.</summary>
    private static int CheckLengths(DType type, int byteLength, int elementLength)
    {
        int size = type.Size();
        if (byteLength % size != 0 || byteLength / size != elementLength)
            throw new ArgumentException($"{byteLength} bytes of {type.Name()} do not match {elementLength} elements");
        return elementLength;
    }

    private static NotSupportedException NotFloat(DType type) =>
        new($"{type.Name()} is not a float type; only F16, BF16, F32, F64, F8_E4M3 and F8_E5M2 convert to and from floats");
}
