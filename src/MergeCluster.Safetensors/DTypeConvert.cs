using System.Runtime.InteropServices;

namespace MergeCluster.Safetensors;

/// <summary>
/// Conversions between stored element bytes and float32/float64, rounding to nearest even and keeping NaN and Inf.
/// Widening is exact; narrowing rounds once.
/// </summary>
public static class DTypeConvert
{
    /// <summary>Decodes <paramref name="source"/> (elements of <paramref name="type"/>) into <paramref name="dest"/>.</summary>
    public static void ToFloat64(DType type, ReadOnlySpan<byte> source, Span<double> dest)
    {
        int n = CheckLengths(type, source.Length, dest.Length);
        switch (type)
        {
            case DType.F64: MemoryMarshal.Cast<byte, double>(source)[..n].CopyTo(dest); break;
            case DType.F32:
                {
                    var s = MemoryMarshal.Cast<byte, float>(source);
                    for (int i = 0; i < n; i++) dest[i] = s[i];
                    break;
                }
            case DType.F16:
                {
                    var s = MemoryMarshal.Cast<byte, Half>(source);
                    for (int i = 0; i < n; i++) dest[i] = (double)s[i];
                    break;
                }
            case DType.BF16:
                {
                    var s = MemoryMarshal.Cast<byte, ushort>(source);
                    for (int i = 0; i < n; i++) dest[i] = BitConverter.Int32BitsToSingle(s[i] << 16);
                    break;
                }
            default: throw new NotSupportedException($"conversion from {type.Name()} is not implemented");
        }
    }

    /// <summary>Decodes <paramref name="source"/> into float32.</summary>
    public static void ToFloat32(DType type, ReadOnlySpan<byte> source, Span<float> dest)
    {
        int n = CheckLengths(type, source.Length, dest.Length);
        switch (type)
        {
            case DType.F32: MemoryMarshal.Cast<byte, float>(source)[..n].CopyTo(dest); break;
            case DType.F64:
                {
                    var s = MemoryMarshal.Cast<byte, double>(source);
                    for (int i = 0; i < n; i++) dest[i] = (float)s[i];
                    break;
                }
            case DType.F16:
                {
                    var s = MemoryMarshal.Cast<byte, Half>(source);
                    for (int i = 0; i < n; i++) dest[i] = (float)s[i];
                    break;
                }
            case DType.BF16:
                {
                    var s = MemoryMarshal.Cast<byte, ushort>(source);
                    for (int i = 0; i < n; i++) dest[i] = BitConverter.Int32BitsToSingle(s[i] << 16);
                    break;
                }
            default: throw new NotSupportedException($"conversion from {type.Name()} is not implemented");
        }
    }

    /// <summary>Encodes float64 values as <paramref name="type"/>, rounding once to nearest even.</summary>
    public static void FromFloat64(ReadOnlySpan<double> source, DType type, Span<byte> dest)
    {
        int n = CheckLengths(type, dest.Length, source.Length);
        switch (type)
        {
            case DType.F64: source[..n].CopyTo(MemoryMarshal.Cast<byte, double>(dest)); break;
            case DType.F32:
                {
                    var d = MemoryMarshal.Cast<byte, float>(dest);
                    for (int i = 0; i < n; i++) d[i] = (float)source[i];
                    break;
                }
            case DType.F16:
                {
                    var d = MemoryMarshal.Cast<byte, Half>(dest);
                    for (int i = 0; i < n; i++) d[i] = (Half)source[i];
                    break;
                }
            case DType.BF16:
                {
                    var d = MemoryMarshal.Cast<byte, ushort>(dest);
                    for (int i = 0; i < n; i++) d[i] = BFloat16FromDouble(source[i]);
                    break;
                }
            default: throw new NotSupportedException($"conversion to {type.Name()} is not implemented");
        }
    }

    /// <summary>Rounds to float with round-to-odd, then to bf16 with nearest-even: together one correct rounding.</summary>
    private static ushort BFloat16FromDouble(double v)
    {
        if (double.IsNaN(v)) return (ushort)(BitConverter.SingleToUInt32Bits(float.NaN) >> 16 | 0x40);
        float f = (float)v;
        if (Math.Abs((double)f) > Math.Abs(v)) f = MathF.BitDecrement(Math.Abs(f)) * MathF.Sign(f);
        uint bits = BitConverter.SingleToUInt32Bits(f);
        if ((double)f != v && !float.IsInfinity(f)) bits |= 1;
        if (float.IsInfinity(f)) return (ushort)(bits >> 16);
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }

    /// <summary>Encodes float32 values as <paramref name="type"/>, rounding once to nearest even.</summary>
    public static void FromFloat32(ReadOnlySpan<float> source, DType type, Span<byte> dest)
    {
        int n = CheckLengths(type, dest.Length, source.Length);
        switch (type)
        {
            case DType.F32: source[..n].CopyTo(MemoryMarshal.Cast<byte, float>(dest)); break;
            case DType.F64:
                {
                    var d = MemoryMarshal.Cast<byte, double>(dest);
                    for (int i = 0; i < n; i++) d[i] = source[i];
                    break;
                }
            case DType.F16:
                {
                    var d = MemoryMarshal.Cast<byte, Half>(dest);
                    for (int i = 0; i < n; i++) d[i] = (Half)source[i];
                    break;
                }
            default: throw new NotSupportedException($"conversion to {type.Name()} is not implemented");
        }
    }

    /// <summary>Element count, after checking that byte and element spans agree.</summary>
    private static int CheckLengths(DType type, int byteLength, int elementLength)
    {
        int size = type.Size();
        if (byteLength % size != 0 || byteLength / size != elementLength)
            throw new ArgumentException($"{byteLength} bytes of {type.Name()} do not match {elementLength} elements");
        return elementLength;
    }
}
