using System.Numerics;
using System.Runtime.CompilerServices;
using System.Text;

namespace MergeCluster.Merge.Synthesis;

/// <summary>
/// Counter-based random bits: a 64-bit stream per (tensor key, seed) and 32 bits per (stream, element index), each a
/// pure function of its inputs, so any range of a tensor is generated alone, on any thread, with SIMD, and always the
/// same. Synthetic checkpoints draw their values from it and DARE its drop masks.
/// </summary>
public static class CounterHash
{
    /// <summary>The stream of a tensor key: a stable hash (string.GetHashCode is randomised per process).</summary>
    public static ulong KeyStream(string key) => SplitMix(Fnv1a(key));

    /// <summary>A stream derived from <paramref name="stream"/> and a seed.</summary>
    public static ulong Derive(ulong stream, ulong seed) => SplitMix(stream ^ SplitMix(seed + 0x9E3779B97F4A7C15UL));

    /// <summary>The two 32-bit words that select a stream for the elements whose index has the high half <paramref name="high"/>.</summary>
    public static (uint Lo, uint Hi) Words(ulong stream, uint high) => ((uint)stream, (uint)(stream >> 32) ^ Hash(new Vector<uint>(high))[0]);

    /// <summary>The random bits of the elements whose low index halves are <paramref name="counter"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<uint> Bits(Vector<uint> counter, Vector<uint> lo, Vector<uint> hi) => Hash(Hash(counter ^ lo) ^ hi);

    /// <summary>Writes the random bits of elements [first, first + dest.Length) of <paramref name="stream"/>.</summary>
    public static void Fill(ulong stream, long first, Span<uint> dest)
    {
        Span<uint> tail = stackalloc uint[Vector<uint>.Count];
        while (!dest.IsEmpty)
        {
            // The hash takes a 32-bit counter; the index's high half selects the words, so split where it changes.
            uint low = (uint)first;
            int n = (int)Math.Min(dest.Length, (1L << 32) - low);
            var (wordLo, wordHi) = Words(stream, (uint)((ulong)first >> 32));
            var lo = new Vector<uint>(wordLo);
            var hi = new Vector<uint>(wordHi);
            var counter = Vector<uint>.Indices + new Vector<uint>(low);
            var step = new Vector<uint>((uint)Vector<uint>.Count);
            var part = dest[..n];
            int i = 0;
            for (; i <= part.Length - Vector<uint>.Count; i += Vector<uint>.Count, counter += step)
                Bits(counter, lo, hi).CopyTo(part[i..]);
            if (i < part.Length)
            {
                Bits(counter, lo, hi).CopyTo(tail);
                tail[..(part.Length - i)].CopyTo(part[i..]);
            }
            first += n;
            dest = dest[n..];
        }
    }

    /// <summary>Chris Wellons' lowbias32: a bijective 32-bit mix that vectorises (32-bit multiplies only).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<uint> Hash(Vector<uint> x)
    {
        x ^= Vector.ShiftRightLogical(x, 16);
        x *= new Vector<uint>(0x7FEB352DU);
        x ^= Vector.ShiftRightLogical(x, 15);
        x *= new Vector<uint>(0x846CA68BU);
        return x ^ Vector.ShiftRightLogical(x, 16);
    }

    private static ulong SplitMix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    private static ulong Fnv1a(string key)
    {
        ulong h = 0xCBF29CE484222325UL;
        foreach (byte b in Encoding.UTF8.GetBytes(key))
            h = (h ^ b) * 0x100000001B3UL;
        return h;
    }
}
