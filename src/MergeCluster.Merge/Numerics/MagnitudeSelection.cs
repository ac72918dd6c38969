namespace MergeCluster.Merge.Numerics;

/// <summary>
/// The k-th smallest magnitude of each of N vectors, as float32 (the magnitudes are rounded to float32 first, as
/// sd-mecha's <c>filter_top_k</c> does with <c>a.abs().float().kthvalue(k)</c>), found without sorting or holding the
/// vectors: radix selection over the 32-bit patterns, which order like the values for non-negative floats. Pass 0
/// histograms the high 16 bits, pass 1 the low 16 bits of the elements in the chosen high bucket. Counts are integers,
/// so the result does not depend on how the elements are split into blocks.
/// </summary>
public sealed class MagnitudeSelection
{
    public const int Passes = 2;
    private const int Buckets = 1 << 16;

    private readonly long[] _rank;
    private readonly uint[] _prefix;
    private readonly int[] _histogram;
    private int _pass = -1;

    /// <param name="ranks">Per vector, the 1-based rank of the magnitude wanted, 1 ≤ rank ≤ element count.</param>
    public MagnitudeSelection(ReadOnlySpan<long> ranks)
    {
        _rank = ranks.ToArray();
        _prefix = new uint[_rank.Length];
        _histogram = new int[_rank.Length * Buckets];
    }

    public int Count => _rank.Length;

    /// <summary>Starts pass 0 or 1.</summary>
    public void Begin(int pass)
    {
        if (pass != _pass + 1 || pass >= Passes) throw new InvalidOperationException($"pass {pass} after pass {_pass}");
        _pass = pass;
        Array.Clear(_histogram);
    }

    /// <summary>Counts the magnitudes of some of vector <paramref name="vector"/>'s elements.</summary>
    public void Observe(int vector, ReadOnlySpan<double> values)
    {
        var histogram = _histogram.AsSpan(vector * Buckets, Buckets);
        if (_pass == 0)
        {
            foreach (double v in values) histogram[(int)(Bits(v) >> 16)]++;
        }
        else
        {
            uint prefix = _prefix[vector];
            foreach (double v in values)
            {
                uint bits = Bits(v);
                if (bits >> 16 == prefix) histogram[(int)(bits & 0xFFFF)]++;
            }
        }
    }

    /// <summary>Ends the current pass: narrows each vector's bucket.</summary>
    public void End()
    {
        for (int v = 0; v < _rank.Length; v++)
        {
            var histogram = _histogram.AsSpan(v * Buckets, Buckets);
            long rank = _rank[v], below = 0;
            int bucket = 0;
            for (; bucket < Buckets - 1 && below + histogram[bucket] < rank; bucket++) below += histogram[bucket];
            if (below + histogram[bucket] < rank) throw new InvalidOperationException($"rank {rank} exceeds the elements counted");
            _rank[v] = rank - below;
            _prefix[v] = _pass == 0 ? (uint)bucket : (_prefix[v] << 16) | (uint)bucket;
        }
    }

    /// <summary>The selected magnitude of a vector, after both passes.</summary>
    public float Value(int vector)
    {
        if (_pass != Passes - 1) throw new InvalidOperationException("selection is not complete");
        return BitConverter.UInt32BitsToSingle(_prefix[vector]);
    }

    private static uint Bits(double v) => BitConverter.SingleToUInt32Bits((float)Math.Abs(v));
}
