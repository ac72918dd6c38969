using MergeCluster.Merge.Synthesis;

namespace MergeCluster.Merge.Methods;

/// <summary>
/// DARE's random drop: element e of input i is kept with probability 1 − p, decided by 32 counter-hash bits of
/// (seed, tensor key, i, e) (<see cref="CounterHash"/>), so the mask is the same for any thread count, shard size,
/// chunking or silo, and needs no state between passes.
/// </summary>
public sealed class DropMask
{
    private readonly ulong[] _streams;
    private readonly ulong _threshold;
    private uint[] _bits = [];

    public DropMask(string key, ulong seed, int inputs, double probability)
    {
        ulong keyed = CounterHash.Derive(CounterHash.KeyStream(key), seed);
        _streams = new ulong[inputs];
        for (int i = 0; i < inputs; i++) _streams[i] = CounterHash.Derive(keyed, (ulong)i);
        // Keep when the 32 random bits are below (1 − p)·2³²: p = 0 keeps everything, p = 1 nothing.
        _threshold = (ulong)Math.Round(Math.Clamp(1.0 - probability, 0.0, 1.0) * 4294967296.0);
    }

    /// <summary>dest[e] = values[e] · mask, mask 1 or 0 as sd-mecha's <c>delta * bernoulli(1 − p)</c> (a dropped −x is −0).</summary>
    public void Apply(int input, long start, ReadOnlySpan<double> values, Span<double> dest)
    {
        if (_bits.Length < values.Length) _bits = new uint[values.Length];
        var bits = _bits.AsSpan(0, values.Length);
        CounterHash.Fill(_streams[input], start, bits);
        for (int e = 0; e < values.Length; e++) dest[e] = values[e] * (bits[e] < _threshold ? 1.0 : 0.0);
    }
}
