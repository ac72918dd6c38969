using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace MergeCluster.Safetensors;

// The kernels for the narrow formats. Each runs a Vector<T> body (256-bit on AVX2, 128-bit on Arm) over whole blocks
// and the scalar reference over the tail, so both produce identical bits. T is float or double; the typeof tests
// fold away when the JIT specialises each kernel.
public static partial class DTypeConvert
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot from the first call: skip tier 0, whose vector code is many times slower
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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Encode16<F, T>(ReadOnlySpan<T> source, Span<ushort> dest) where F : INarrowFloatFormat where T : unmanaged
    {
        int i = 0;
        if (typeof(T) == typeof(double) && Vector512.IsHardwareAccelerated)
        {
            // The merge's final rounding: straight from the float64 bits, 32 lanes per step.
            ref double src = ref Unsafe.As<T, double>(ref MemoryMarshal.GetReference(source));
            ref ushort dst = ref MemoryMarshal.GetReference(dest);
            const int n = 8; // Vector512<double>.Count
            for (; i <= source.Length - 4 * n; i += 4 * n)
                Vector512.Narrow(
                    Vector512.Narrow(NarrowFloat.Encode<F>(Vector512.LoadUnsafe(ref src, (nuint)i)), NarrowFloat.Encode<F>(Vector512.LoadUnsafe(ref src, (nuint)(i + n)))),
                    Vector512.Narrow(NarrowFloat.Encode<F>(Vector512.LoadUnsafe(ref src, (nuint)(i + 2 * n))), NarrowFloat.Encode<F>(Vector512.LoadUnsafe(ref src, (nuint)(i + 3 * n)))))
                    .StoreUnsafe(ref dst, (nuint)i);
        }
        if (Vector.IsHardwareAccelerated)
        {
            ref T src = ref MemoryMarshal.GetReference(source);
            ref ushort dst = ref MemoryMarshal.GetReference(dest);
            for (; i <= source.Length - Vector<ushort>.Count; i += Vector<ushort>.Count)
                LoadEncoded<F, T>(ref src, i).StoreUnsafe(ref dst, (nuint)i);
        }
        for (; i < source.Length; i++) dest[i] = (ushort)EncodeScalar<F, T>(source[i]);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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

    /// <summary>acc[i] += c · decode(source[i]) for 16-bit codes: decode and accumulate in one pass, nothing stored between.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Accumulate16<F>(ReadOnlySpan<ushort> source, double coefficient, Span<double> acc) where F : INarrowFloatFormat
    {
        int i = 0;
        ref ushort src = ref MemoryMarshal.GetReference(source);
        ref double dst = ref MemoryMarshal.GetReference(acc);
        if (Vector512.IsHardwareAccelerated && coefficient == 1.0)
        {
            // A plain mean: the multiply by 1 is exact, so leaving it out gives the same bits with one op fewer per vector.
            for (; i <= source.Length - Vector512<ushort>.Count; i += Vector512<ushort>.Count)
            {
                var (lower, upper) = Decode16x32<F>(Vector512.LoadUnsafe(ref src, (nuint)i));
                AddSingles(lower, ref dst, i);
                AddSingles(upper, ref dst, i + Vector512<uint>.Count);
            }
        }
        if (Vector512.IsHardwareAccelerated)
        {
            var c = Vector512.Create(coefficient);
            for (; i <= source.Length - Vector512<ushort>.Count; i += Vector512<ushort>.Count)
            {
                var (lower, upper) = Decode16x32<F>(Vector512.LoadUnsafe(ref src, (nuint)i));
                AddSingles(lower, c, ref dst, i);
                AddSingles(upper, c, ref dst, i + Vector512<uint>.Count);
            }
        }
        if (Vector.IsHardwareAccelerated)
        {
            var c = new Vector<double>(coefficient);
            for (; i <= source.Length - Vector<ushort>.Count; i += Vector<ushort>.Count)
                AddDecoded<F>(Vector.LoadUnsafe(ref src, (nuint)i), c, ref dst, i);
        }
        for (; i < source.Length; i++) acc[i] += coefficient * NarrowFloat.Decode<F>(source[i]);
    }

    // How far ahead Sum16 asks for each source's cache lines: 1 KiB. The loop steps through all the sources 64 bytes at
    // a time, one cache line of each per step, and on its own waited for memory on that load (a quarter of all samples
    // of a merge); 512 B ahead, 2 and 4 KiB measured slower than 1 KiB (docs/performance.md). A prefetch never faults,
    // so asking past the end of a window or a mapping is harmless.
    private const int PrefetchCodes = 512;

    /// <summary>
    /// The whole 32-element blocks of <see cref="SumFloat64"/> for 16-bit codes (none without Vector512): four
    /// registers of sums per block, every term added into them in order, one store. Returns the elements done.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe int Sum16<F>(ReadOnlySpan<nint> sources, ReadOnlySpan<double> coefficients, Span<double> acc) where F : INarrowFloatFormat
    {
        if (!Vector512.IsHardwareAccelerated) return 0;
        const int n = 8; // Vector512<double>.Count
        int i = 0;
        ref double dst = ref MemoryMarshal.GetReference(acc);
        for (; i <= acc.Length - 4 * n; i += 4 * n)
        {
            Vector512<double> s0 = default, s1 = default, s2 = default, s3 = default; // +0.0, as a cleared accumulator
            for (int t = 0; t < sources.Length; t++)
            {
                ushort* source = (ushort*)sources[t] + i;
                if (Sse.IsSupported) Sse.Prefetch0(source + PrefetchCodes);
                var (lower, upper) = Decode16x32<F>(Vector512.Load(source));
                var (a, b) = Vector512.Widen(lower);
                var (c, d) = Vector512.Widen(upper);
                double k = coefficients[t];
                if (k == 1.0)
                {
                    // As Accumulate16: the multiply by 1 is exact, so leaving it out changes no bit.
                    s0 += a; s1 += b; s2 += c; s3 += d;
                }
                else
                {
                    var kv = Vector512.Create(k);
                    s0 += kv * a; s1 += kv * b; s2 += kv * c; s3 += kv * d;
                }
            }
            s0.StoreUnsafe(ref dst, (nuint)i);
            s1.StoreUnsafe(ref dst, (nuint)(i + n));
            s2.StoreUnsafe(ref dst, (nuint)(i + 2 * n));
            s3.StoreUnsafe(ref dst, (nuint)(i + 3 * n));
        }
        return i;
    }

    /// <summary>Decodes 32 16-bit codes to two vectors of float32, taking the short path when every code is a normal number.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector512<float> Lower, Vector512<float> Upper) Decode16x32<F>(Vector512<ushort> codes) where F : INarrowFloatFormat
    {
        var (lower, upper) = Vector512.Widen(codes);
        return F.ExponentBits < 8 && NarrowFloat.AllNormal<F>(codes)
            ? (NarrowFloat.DecodeNormal<F>(lower), NarrowFloat.DecodeNormal<F>(upper))
            : (NarrowFloat.Decode<F>(lower), NarrowFloat.Decode<F>(upper));
    }

    /// <summary>acc[i] += c · decode(source[i]) for 8-bit codes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Accumulate8<F>(ReadOnlySpan<byte> source, double coefficient, Span<double> acc) where F : INarrowFloatFormat
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var c = new Vector<double>(coefficient);
            ref byte src = ref MemoryMarshal.GetReference(source);
            ref double dst = ref MemoryMarshal.GetReference(acc);
            for (; i <= source.Length - Vector<byte>.Count; i += Vector<byte>.Count)
            {
                Vector.Widen(Vector.LoadUnsafe(ref src, (nuint)i), out var low, out var high);
                AddDecoded<F>(low, c, ref dst, i);
                AddDecoded<F>(high, c, ref dst, i + Vector<ushort>.Count);
            }
        }
        for (; i < source.Length; i++) acc[i] += coefficient * NarrowFloat.Decode<F>(source[i]);
    }

    /// <summary>acc[i] += c · source[i] for float32 (widened exactly) and float64 sources.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AccumulateWide<T>(ReadOnlySpan<T> source, double coefficient, Span<double> acc) where T : unmanaged
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var c = new Vector<double>(coefficient);
            ref T src = ref MemoryMarshal.GetReference(source);
            ref double dst = ref MemoryMarshal.GetReference(acc);
            if (typeof(T) == typeof(float))
                for (; i <= source.Length - Vector<float>.Count; i += Vector<float>.Count)
                    AddSingles(Vector.LoadUnsafe(ref Unsafe.As<T, float>(ref src), (nuint)i), c, ref dst, i);
            else
                for (; i <= source.Length - Vector<double>.Count; i += Vector<double>.Count)
                {
                    var sum = Vector.LoadUnsafe(ref dst, (nuint)i) + c * Vector.LoadUnsafe(ref Unsafe.As<T, double>(ref src), (nuint)i);
                    sum.StoreUnsafe(ref dst, (nuint)i);
                }
        }
        for (; i < source.Length; i++)
            acc[i] += coefficient * (typeof(T) == typeof(float) ? Unsafe.BitCast<T, float>(source[i]) : Unsafe.BitCast<T, double>(source[i]));
    }

    /// <summary>acc[i..] += values for one Vector512 of float32 values (coefficient 1).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddSingles(Vector512<float> values, ref double acc, int i)
    {
        var (lower, upper) = Vector512.Widen(values);
        (Vector512.LoadUnsafe(ref acc, (nuint)i) + lower).StoreUnsafe(ref acc, (nuint)i);
        (Vector512.LoadUnsafe(ref acc, (nuint)(i + Vector512<double>.Count)) + upper).StoreUnsafe(ref acc, (nuint)(i + Vector512<double>.Count));
    }

    /// <summary>acc[i..] += c · values for one Vector512 of float32 values, as the Vector&lt;T&gt; overload.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddSingles(Vector512<float> values, Vector512<double> c, ref double acc, int i)
    {
        var (lower, upper) = Vector512.Widen(values);
        (Vector512.LoadUnsafe(ref acc, (nuint)i) + c * lower).StoreUnsafe(ref acc, (nuint)i);
        (Vector512.LoadUnsafe(ref acc, (nuint)(i + Vector512<double>.Count)) + c * upper).StoreUnsafe(ref acc, (nuint)(i + Vector512<double>.Count));
    }

    /// <summary>acc[i..] += c · decode(codes) for the Vector&lt;ushort&gt;.Count codes of one vector.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddDecoded<F>(Vector<ushort> codes, Vector<double> c, ref double acc, int i) where F : INarrowFloatFormat
    {
        Vector.Widen(codes, out var lower, out var upper);
        AddSingles(NarrowFloat.Decode<F>(lower), c, ref acc, i);
        AddSingles(NarrowFloat.Decode<F>(upper), c, ref acc, i + Vector<uint>.Count);
    }

    /// <summary>
    /// acc[i..] += c · values, widened exactly to float64. Product and sum are two roundings, never an FMA (the JIT does
    /// not contract them), as the scalar tails compute.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddSingles(Vector<float> values, Vector<double> c, ref double acc, int i)
    {
        Vector.Widen(values, out var lower, out var upper);
        (Vector.LoadUnsafe(ref acc, (nuint)i) + c * lower).StoreUnsafe(ref acc, (nuint)i);
        (Vector.LoadUnsafe(ref acc, (nuint)(i + Vector<double>.Count)) + c * upper).StoreUnsafe(ref acc, (nuint)(i + Vector<double>.Count));
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
    private static Vector<ushort> LoadEncoded<F, T>(ref T source, int i) where F : INarrowFloatFormat where T : unmanaged
    {
        if (typeof(T) == typeof(double))
        {
            // Straight from the float64 bits (see NarrowFloat.Encode(Vector<double>)): no round-to-odd detour.
            ref double s = ref Unsafe.As<T, double>(ref source);
            int n = Vector<double>.Count;
            return Vector.Narrow(
                Vector.Narrow(NarrowFloat.Encode<F>(Vector.LoadUnsafe(ref s, (nuint)i)), NarrowFloat.Encode<F>(Vector.LoadUnsafe(ref s, (nuint)(i + n)))),
                Vector.Narrow(NarrowFloat.Encode<F>(Vector.LoadUnsafe(ref s, (nuint)(i + 2 * n))), NarrowFloat.Encode<F>(Vector.LoadUnsafe(ref s, (nuint)(i + 3 * n)))));
        }
        return Vector.Narrow(NarrowFloat.Encode<F>(LoadSingles(ref source, i)), NarrowFloat.Encode<F>(LoadSingles(ref source, i + Vector<uint>.Count)));
    }

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
