using System.Numerics;
using System.Runtime.CompilerServices;

namespace MergeCluster.Merge.Synthesis;

/// <summary>
/// The values of one synthetic tensor: a base shared by every seed plus a small per-seed deviation, each element a pure
/// function of (key, index, seed) through a counter-based hash (<see cref="CounterHash"/>), so any range can be generated alone, on any thread,
/// with SIMD. Base weights follow roughly N(0, 0.02) like trained weights; norm scales sit near 1; the deviation's
/// standard deviation is <see cref="DeviationRatio"/> of the base's, like the distance between fine-tunes of one model.
/// </summary>
public readonly struct SyntheticValues
{
    /// <summary>Deviation of one seed from the base, relative to the base's standard deviation.</summary>
    public const float DeviationRatio = 0.04f;

    // The sum of the four bytes of a uniform 32-bit word has mean 510 and standard deviation sqrt(4 * (256^2 - 1) / 12).
    private const float ByteSumMean = 510f;
    private static readonly float ByteSumScale = 1f / MathF.Sqrt(4f * (256f * 256f - 1f) / 12f);

    private readonly ulong _baseStream;
    private readonly ulong _deviationStream;
    private readonly float _mean;
    private readonly float _std;

    public SyntheticValues(string key, ulong seed)
    {
        _baseStream = CounterHash.KeyStream(key);
        _deviationStream = CounterHash.Derive(_baseStream, seed);
        (_mean, _std) = Profile(key);
    }

    /// <summary>Mean of the base values of this tensor.</summary>
    public float Mean => _mean;
    /// <summary>Standard deviation of the base values around <see cref="Mean"/>.</summary>
    public float StandardDeviation => _std;

    /// <summary>Writes the values of elements [first, first + dest.Length) of the tensor.</summary>
    public void Fill(long first, Span<float> dest)
    {
        // The hash takes a 32-bit counter; the counter's high half selects the stream, so split where it changes.
        while (!dest.IsEmpty)
        {
            uint low = (uint)first;
            int n = (int)Math.Min(dest.Length, (1L << 32) - low);
            uint high = (uint)((ulong)first >> 32);
            FillBlock(Stream(_baseStream, high), Stream(_deviationStream, high), low, dest[..n]);
            first += n;
            dest = dest[n..];
        }
    }

    /// <summary>One element's value; the same as <see cref="Fill"/> gives at that index.</summary>
    public float this[long index]
    {
        get
        {
            Span<float> one = stackalloc float[1];
            Fill(index, one);
            return one[0];
        }
    }

    private static (uint, uint) Stream(ulong stream, uint high) => CounterHash.Words(stream, high);

    private void FillBlock((uint Lo, uint Hi) b, (uint Lo, uint Hi) d, uint firstCounter, Span<float> dest)
    {
        var mean = new Vector<float>(_mean);
        var std = new Vector<float>(_std);
        var deviationStd = new Vector<float>(_std * DeviationRatio);
        var counter = Vector<uint>.Indices + new Vector<uint>(firstCounter);
        var step = new Vector<uint>((uint)Vector<uint>.Count);
        var bLo = new Vector<uint>(b.Lo);
        var bHi = new Vector<uint>(b.Hi);
        var dLo = new Vector<uint>(d.Lo);
        var dHi = new Vector<uint>(d.Hi);
        int i = 0;
        for (; i <= dest.Length - Vector<float>.Count; i += Vector<float>.Count, counter += step)
            Value(counter, bLo, bHi, dLo, dHi, mean, std, deviationStd).CopyTo(dest[i..]);
        if (i < dest.Length)
        {
            // The tail goes through the same vector path, so every element's value is independent of where a chunk starts.
            Span<float> tail = stackalloc float[Vector<float>.Count];
            Value(counter, bLo, bHi, dLo, dHi, mean, std, deviationStd).CopyTo(tail);
            tail[..(dest.Length - i)].CopyTo(dest[i..]);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<float> Value(Vector<uint> counter, Vector<uint> bLo, Vector<uint> bHi, Vector<uint> dLo, Vector<uint> dHi,
        Vector<float> mean, Vector<float> std, Vector<float> deviationStd)
    {
        var b = Gaussian(CounterHash.Bits(counter, bLo, bHi));
        var d = Gaussian(CounterHash.Bits(counter, dLo, dHi));
        return mean + std * b + deviationStd * d;
    }

    /// <summary>An approximately standard normal value (Irwin-Hall of the word's four bytes): cheap, bounded by ±3.45.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<float> Gaussian(Vector<uint> h)
    {
        var pairs = new Vector<uint>(0x00FF00FFU);
        var s = (h & pairs) + (Vector.ShiftRightLogical(h, 8) & pairs);
        s = (s & new Vector<uint>(0xFFFFU)) + Vector.ShiftRightLogical(s, 16);
        return (Vector.ConvertToSingle(Vector.AsVectorInt32(s)) - new Vector<float>(ByteSumMean)) * new Vector<float>(ByteSumScale);
    }

    /// <summary>Realistic magnitudes by the kind of tensor the key names.</summary>
    private static (float Mean, float Std) Profile(string key)
    {
        if (key.EndsWith("logit_scale", StringComparison.Ordinal)) return (MathF.Log(100f), 0f);
        int dot = key.LastIndexOf('.');
        string last = dot > 0 ? key[(key.LastIndexOf('.', dot - 1) + 1)..dot] : key;
        bool norm = last.Contains("norm", StringComparison.Ordinal) || last.StartsWith("ln_", StringComparison.Ordinal);
        if (norm && key.EndsWith(".weight", StringComparison.Ordinal)) return (1f, 0.1f);
        return (0f, 0.02f);
    }
}
