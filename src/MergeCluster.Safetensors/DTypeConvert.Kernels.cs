using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace MergeCluster.Safetensors;

// The kernels for the narrow formats. Each runs a Vector<T> body (256-bit on AVX2, 128-bit on Arm) over whole blocks
// and the scalar reference over the tail, so both produce identical bits. T is float or double; the typeof tests
// fold away when the JIT specialises each kernel.
public static partial class DTypeConvert
{
    private static void Decode16<F, T>(ReadOnlySpan<ushort> source, Span<T> dest) where F : INarrowFloatFormat where T : unmanaged
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            ref ushort src = ref MemoryMarshal.GetReference(source);
            ref T dst = ref MemoryMarshal.GetReference(dest);
            for (; i <= source.Length - Vector<ushort>.Count; i += Vector<ushort>.Count)
                StoreDecoded<F, T>(Vector.LoadUnsafe(ref src, (nuint)i), ref dst, i);
        }
        for (; i < source.Length; i++) dest[i] = FromSingle<T>(NarrowFloat.Decode<F>(source[i]));
    }

    private static void Decode8<F, T>(ReadOnlySpan<byte> source, Span<T> dest) where F : INarrowFloatFormat where T : unmanaged
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            ref byte src = ref MemoryMarshal.GetReference(source);
            ref T dst = ref MemoryMarshal.GetReference(dest);
            for (; i <= source.Length - Vector<byte>.Count; i += Vector<byte>.Count)
            {
                Vector.Widen(Vector.LoadUnsafe(ref src, (nuint)i), out var lower, out var upper);
                StoreDecoded<F, T>(lower, ref dst, i);
                StoreDecoded<F, T>(upper, ref dst, i + Vector<ushort>.Count);
            }
        }
        for (; i < source.Length; i++) dest[i] = FromSingle<T>(NarrowFloat.Decode<F>(source[i]));
    }

    private static void Encode16<F, T>(ReadOnlySpan<T> source, Span<ushort> dest) where F : INarrowFloatFormat where T : unmanaged
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            ref T src = ref MemoryMarshal.GetReference(source);
            ref ushort dst = ref MemoryMarshal.GetReference(dest);
            for (; i <= source.Length - Vector<ushort>.Count; i += Vector<ushort>.Count)
                LoadEncoded<F, T>(ref src, i).StoreUnsafe(ref dst, (nuint)i);
        }
        for (; i < source.Length; i++) dest[i] = (ushort)EncodeScalar<F, T>(source[i]);
    }

    private static void Encode8<F, T>(ReadOnlySpan<T> source, Span<byte> dest) where F : INarrowFloatFormat where T : unmanaged
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            ref T src = ref MemoryMarshal.GetReference(source);
            ref byte dst = ref MemoryMarshal.GetReference(dest);
            for (; i <= source.Length - Vector<byte>.Count; i += Vector<byte>.Count)
                Vector.Narrow(LoadEncoded<F, T>(ref src, i), LoadEncoded<F, T>(ref src, i + Vector<ushort>.Count)).StoreUnsafe(ref dst, (nuint)i);
        }
        for (; i < source.Length; i++) dest[i] = (byte)EncodeScalar<F, T>(source[i]);
    }

    /// <summary>Decodes one vector of codes and stores the Vector&lt;ushort&gt;.Count values at dest[i..].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreDecoded<F, T>(Vector<ushort> codes, ref T dest, int i) where F : INarrowFloatFormat where T : unmanaged
    {
        Vector.Widen(codes, out var lower, out var upper);
        StoreSingles(NarrowFloat.Decode<F>(lower), ref dest, i);
        StoreSingles(NarrowFloat.Decode<F>(upper), ref dest, i + Vector<uint>.Count);
    }

    /// <summary>Encodes the Vector&lt;ushort&gt;.Count values at source[i..] into one vector of codes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<ushort> LoadEncoded<F, T>(ref T source, int i) where F : INarrowFloatFormat where T : unmanaged =>
        Vector.Narrow(NarrowFloat.Encode<F>(LoadSingles(ref source, i)), NarrowFloat.Encode<F>(LoadSingles(ref source, i + Vector<uint>.Count)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreSingles<T>(Vector<float> values, ref T dest, int i) where T : unmanaged
    {
        if (typeof(T) == typeof(double))
        {
            Vector.Widen(values, out var lower, out var upper);
            ref double d = ref Unsafe.As<T, double>(ref dest);
            lower.StoreUnsafe(ref d, (nuint)i);
            upper.StoreUnsafe(ref d, (nuint)(i + Vector<double>.Count));
        }
        else
            values.StoreUnsafe(ref Unsafe.As<T, float>(ref dest), (nuint)i);
    }

    /// <summary>float32 lanes from source[i..]; float64 is first rounded to odd so the format's rounding is the only one.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<float> LoadSingles<T>(ref T source, int i) where T : unmanaged
    {
        if (typeof(T) == typeof(double))
        {
            ref double s = ref Unsafe.As<T, double>(ref source);
            return NarrowFloat.RoundToOdd(Vector.LoadUnsafe(ref s, (nuint)i), Vector.LoadUnsafe(ref s, (nuint)(i + Vector<double>.Count)));
        }
        return Vector.LoadUnsafe(ref Unsafe.As<T, float>(ref source), (nuint)i);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static T FromSingle<T>(float value) where T : unmanaged =>
        typeof(T) == typeof(double) ? Unsafe.BitCast<double, T>(value) : Unsafe.BitCast<float, T>(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint EncodeScalar<F, T>(T value) where F : INarrowFloatFormat where T : unmanaged =>
        typeof(T) == typeof(double) ? NarrowFloat.Encode<F>(Unsafe.BitCast<T, double>(value)) : NarrowFloat.Encode<F>(Unsafe.BitCast<T, float>(value));
}
