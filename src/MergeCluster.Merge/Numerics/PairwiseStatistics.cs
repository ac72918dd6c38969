using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace MergeCluster.Merge.Numerics;

/// <summary>What <see cref="PairwiseStatistics"/> accumulates besides the squared norms.</summary>
[Flags]
public enum PairwiseTerms
{
    /// <summary>Only ‖xᵢ‖².</summary>
    Norms = 0,
    /// <summary>xᵢ·xⱼ for every pair.</summary>
    Dots = 1,
    /// <summary>‖xᵢ − xⱼ‖² for every pair, summed from the differences themselves (no cancellation, unlike a Gram).</summary>
    SquaredDistances = 2,
    All = Dots | SquaredDistances,
}

/// <summary>
/// Squared norms, dot products and squared distances between every pair of N equally long vectors (N up to ~50 models),
/// streamed block by block in one pass: the statistics of geometric median, model stock and slerp, and of a distance
/// map between models.
/// </summary>
/// <remarks>
/// <para>Feed each vector's elements in order, in blocks of any length (<see cref="Add"/>); call <see cref="Complete"/>
/// before reading. The bits of every result depend on the values alone, never on block lengths, threads or the
/// machine's SIMD width: element e (counted from the first element fed) goes to lane e mod 8 of a 4096-element panel
/// that starts at a multiple of 4096; a panel's lanes are combined in <see cref="FixedOrder"/>'s order, and panels are
/// added in order with Neumaier's compensation, so a 63M-element tensor sums 15K panel totals, not 63M terms.</para>
/// <para>Pairs are register-blocked: one xᵢ load feeds four pairs (i, j..j+3).</para>
/// </remarks>
public sealed class PairwiseStatistics
{
    /// <summary>Elements per panel: the unit whose lanes are combined before the compensated running total.</summary>
    public const int PanelElements = 4096;
    private const int Lanes = FixedOrder.Lanes;

    private readonly SimdPath _path;
    private readonly bool _dots, _distances;
    private readonly double[] _normLanes, _dotLanes, _distLanes;
    private readonly Total[] _norms, _dotTotals, _distTotals;
    private bool _complete;

    /// <param name="count">Number of vectors.</param>
    /// <param name="terms">Which pairwise sums to accumulate besides the norms; each costs about as much as the norms times N/2.</param>
    public PairwiseStatistics(int count, PairwiseTerms terms = PairwiseTerms.All) : this(count, terms, SimdPath.Auto) { }

    internal PairwiseStatistics(int count, PairwiseTerms terms, SimdPath path)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        Count = count;
        _path = FixedOrder.Resolve(path);
        _dots = (terms & PairwiseTerms.Dots) != 0;
        _distances = (terms & PairwiseTerms.SquaredDistances) != 0;
        int pairs = count * (count - 1) / 2;
        _normLanes = new double[count * Lanes];
        _dotLanes = new double[_dots ? pairs * Lanes : 0];
        _distLanes = new double[_distances ? pairs * Lanes : 0];
        _norms = new Total[count];
        _dotTotals = new Total[_dots ? pairs : 0];
        _distTotals = new Total[_distances ? pairs : 0];
    }

    /// <summary>Number of vectors.</summary>
    public int Count { get; }
    /// <summary>Elements of each vector fed so far.</summary>
    public long Elements { get; private set; }

    /// <summary>Adds elements [offset, offset + length) of each vector: vectors[i] holds vector i's next elements there.</summary>
    public void Add(IReadOnlyList<double[]> vectors, int offset, int length)
    {
        if (vectors.Count != Count) throw new ArgumentException($"{vectors.Count} vectors given, {Count} expected");
        if (_complete) throw new InvalidOperationException("statistics already completed");
        while (length > 0)
        {
            int inPanel = (int)(Elements % PanelElements);
            int n = Math.Min(length, PanelElements - inPanel);
            AddRun(vectors, offset, n, inPanel % Lanes);
            Elements += n;
            offset += n;
            length -= n;
            if (Elements % PanelElements == 0) FlushPanel();
        }
    }

    /// <summary>Clears every total, so one instance serves tensor after tensor without reallocating its lanes.</summary>
    public void Reset()
    {
        Array.Clear(_normLanes);
        Array.Clear(_dotLanes);
        Array.Clear(_distLanes);
        Array.Clear(_norms);
        Array.Clear(_dotTotals);
        Array.Clear(_distTotals);
        Elements = 0;
        _complete = false;
    }

    /// <summary>Closes the last partial panel; results can be read from now on.</summary>
    public void Complete()
    {
        if (_complete) return;
        if (Elements % PanelElements != 0) FlushPanel();
        _complete = true;
    }

    public double SquaredNorm(int i) => Read(_norms, i);

    public double Dot(int i, int j)
    {
        if (!_dots) throw new InvalidOperationException("dot products were not accumulated");
        return i == j ? SquaredNorm(i) : Read(_dotTotals, Pair(i, j));
    }

    public double SquaredDistance(int i, int j)
    {
        if (!_distances) throw new InvalidOperationException("distances were not accumulated");
        return i == j ? 0.0 : Read(_distTotals, Pair(i, j));
    }

    /// <summary>xᵢ·xⱼ / (‖xᵢ‖‖xⱼ‖), or 0 when either vector is zero.</summary>
    public double Cosine(int i, int j)
    {
        double norms = Math.Sqrt(SquaredNorm(i)) * Math.Sqrt(SquaredNorm(j));
        return norms == 0 ? 0 : Dot(i, j) / norms;
    }

    private double Read(Total[] totals, int index)
    {
        if (!_complete) throw new InvalidOperationException("call Complete before reading statistics");
        return totals[index].Value;
    }

    /// <summary>Index of pair (i, j), i ≠ j, in the upper triangle.</summary>
    private int Pair(int i, int j)
    {
        if (i > j) (i, j) = (j, i);
        return i * (2 * Count - i - 1) / 2 + (j - i - 1);
    }

    /// <summary>Elements of one panel, the first in lane <paramref name="lane"/>: scalar head, 8-lane body, scalar tail.</summary>
    private void AddRun(IReadOnlyList<double[]> vectors, int offset, int n, int lane)
    {
        int head = Math.Min(n, (Lanes - lane) % Lanes);
        for (int k = 0; k < head; k++) AddElement(vectors, offset + k, lane + k);
        int bodyStart = offset + head;
        int body = (n - head) / Lanes * Lanes;
        if (body > 0)
        {
            if (_path == SimdPath.Scalar)
                for (int k = 0; k < body; k++) AddElement(vectors, bodyStart + k, k % Lanes);
            else
                AddBody(vectors, bodyStart, body);
        }
        for (int k = head + body; k < n; k++) AddElement(vectors, offset + k, (lane + k) % Lanes);
    }

    private void AddElement(IReadOnlyList<double[]> vectors, int index, int lane)
    {
        int p = 0;
        for (int i = 0; i < Count; i++)
        {
            double xi = vectors[i][index];
            _normLanes[i * Lanes + lane] += xi * xi;
            for (int j = i + 1; j < Count; j++, p++)
            {
                double xj = vectors[j][index];
                if (_dots) _dotLanes[p * Lanes + lane] += xi * xj;
                if (_distances)
                {
                    double d = xi - xj;
                    _distLanes[p * Lanes + lane] += d * d;
                }
            }
        }
    }

    /// <summary><paramref name="length"/> elements (a multiple of 8) starting in lane 0.</summary>
    private void AddBody(IReadOnlyList<double[]> vectors, int offset, int length)
    {
        // Vector256 covers the eight lanes in two halves (lanes 0-3, then 4-7), so four pairs' accumulators fit in the
        // 16 registers of AVX2; Vector512 covers them in one.
        int halves = _path == SimdPath.Vector512 ? 1 : 2;
        for (int i = 0; i < Count; i++)
        {
            for (int h = 0; h < halves; h++) NormBody(vectors[i], offset, length, i, h);
            int j = i + 1;
            for (; j + 4 <= Count; j += 4)
                for (int h = 0; h < halves; h++) PairBody(vectors, offset, length, i, j, 4, h);
            for (; j < Count; j++)
                for (int h = 0; h < halves; h++) PairBody(vectors, offset, length, i, j, 1, h);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void NormBody(double[] x, int offset, int length, int i, int half)
    {
        ref double xr = ref MemoryMarshal.GetArrayDataReference(x);
        ref double lanes = ref _normLanes[i * Lanes];
        if (_path == SimdPath.Vector512)
        {
            var acc = Vector512.LoadUnsafe(ref lanes);
            for (int k = offset; k < offset + length; k += Lanes)
            {
                var v = Vector512.LoadUnsafe(ref xr, (nuint)k);
                acc += v * v;
            }
            acc.StoreUnsafe(ref lanes);
        }
        else
        {
            nuint h = (nuint)(half * 4);
            var acc = Vector256.LoadUnsafe(ref lanes, h);
            for (int k = offset; k < offset + length; k += Lanes)
            {
                var v = Vector256.LoadUnsafe(ref xr, (nuint)k + h);
                acc += v * v;
            }
            acc.StoreUnsafe(ref lanes, h);
        }
    }

    /// <summary>Pairs (i, j) .. (i, j + width − 1), width 4 or 1, over one lane half (Vector256) or all lanes (Vector512).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void PairBody(IReadOnlyList<double[]> vectors, int offset, int length, int i, int j, int width, int half)
    {
        int p = Pair(i, j);
        if (_path == SimdPath.Vector512) PairBody512(vectors, offset, length, i, j, p, width);
        else PairBody256(vectors, offset, length, i, j, p, width, (nuint)(half * 4));
    }

    private void PairBody256(IReadOnlyList<double[]> vectors, int offset, int length, int i, int j, int p, int width, nuint h)
    {
        ref double xi = ref MemoryMarshal.GetArrayDataReference(vectors[i]);
        ref double dots = ref MemoryMarshal.GetArrayDataReference(_dotLanes);
        ref double dists = ref MemoryMarshal.GetArrayDataReference(_distLanes);
        if (width == 4)
        {
            ref double x0 = ref MemoryMarshal.GetArrayDataReference(vectors[j]);
            ref double x1 = ref MemoryMarshal.GetArrayDataReference(vectors[j + 1]);
            ref double x2 = ref MemoryMarshal.GetArrayDataReference(vectors[j + 2]);
            ref double x3 = ref MemoryMarshal.GetArrayDataReference(vectors[j + 3]);
            nuint l0 = (nuint)(p * Lanes) + h, l1 = l0 + Lanes, l2 = l1 + Lanes, l3 = l2 + Lanes;
            Vector256<double> d0 = default, d1 = default, d2 = default, d3 = default;
            Vector256<double> s0 = default, s1 = default, s2 = default, s3 = default;
            if (_dots) (d0, d1, d2, d3) = (Vector256.LoadUnsafe(ref dots, l0), Vector256.LoadUnsafe(ref dots, l1), Vector256.LoadUnsafe(ref dots, l2), Vector256.LoadUnsafe(ref dots, l3));
            if (_distances) (s0, s1, s2, s3) = (Vector256.LoadUnsafe(ref dists, l0), Vector256.LoadUnsafe(ref dists, l1), Vector256.LoadUnsafe(ref dists, l2), Vector256.LoadUnsafe(ref dists, l3));
            for (int k = offset; k < offset + length; k += Lanes)
            {
                nuint at = (nuint)k + h;
                var a = Vector256.LoadUnsafe(ref xi, at);
                var b0 = Vector256.LoadUnsafe(ref x0, at);
                var b1 = Vector256.LoadUnsafe(ref x1, at);
                var b2 = Vector256.LoadUnsafe(ref x2, at);
                var b3 = Vector256.LoadUnsafe(ref x3, at);
                if (_dots)
                {
                    d0 += a * b0; d1 += a * b1; d2 += a * b2; d3 += a * b3;
                }
                if (_distances)
                {
                    var e0 = a - b0; var e1 = a - b1; var e2 = a - b2; var e3 = a - b3;
                    s0 += e0 * e0; s1 += e1 * e1; s2 += e2 * e2; s3 += e3 * e3;
                }
            }
            if (_dots) { d0.StoreUnsafe(ref dots, l0); d1.StoreUnsafe(ref dots, l1); d2.StoreUnsafe(ref dots, l2); d3.StoreUnsafe(ref dots, l3); }
            if (_distances) { s0.StoreUnsafe(ref dists, l0); s1.StoreUnsafe(ref dists, l1); s2.StoreUnsafe(ref dists, l2); s3.StoreUnsafe(ref dists, l3); }
        }
        else
        {
            ref double x0 = ref MemoryMarshal.GetArrayDataReference(vectors[j]);
            nuint l0 = (nuint)(p * Lanes) + h;
            var d0 = _dots ? Vector256.LoadUnsafe(ref dots, l0) : default;
            var s0 = _distances ? Vector256.LoadUnsafe(ref dists, l0) : default;
            for (int k = offset; k < offset + length; k += Lanes)
            {
                nuint at = (nuint)k + h;
                var a = Vector256.LoadUnsafe(ref xi, at);
                var b0 = Vector256.LoadUnsafe(ref x0, at);
                if (_dots) d0 += a * b0;
                if (_distances) { var e0 = a - b0; s0 += e0 * e0; }
            }
            if (_dots) d0.StoreUnsafe(ref dots, l0);
            if (_distances) s0.StoreUnsafe(ref dists, l0);
        }
    }

    private void PairBody512(IReadOnlyList<double[]> vectors, int offset, int length, int i, int j, int p, int width)
    {
        ref double xi = ref MemoryMarshal.GetArrayDataReference(vectors[i]);
        ref double dots = ref MemoryMarshal.GetArrayDataReference(_dotLanes);
        ref double dists = ref MemoryMarshal.GetArrayDataReference(_distLanes);
        for (int w = 0; w < width; w++)
        {
            // One Vector512 holds all eight lanes, so the four pairs of a block run one after the other: the
            // accumulators still stay in registers, only xᵢ is reloaded (from L1).
            ref double xj = ref MemoryMarshal.GetArrayDataReference(vectors[j + w]);
            nuint l = (nuint)((p + w) * Lanes);
            var d = _dots ? Vector512.LoadUnsafe(ref dots, l) : default;
            var s = _distances ? Vector512.LoadUnsafe(ref dists, l) : default;
            for (int k = offset; k < offset + length; k += Lanes)
            {
                var a = Vector512.LoadUnsafe(ref xi, (nuint)k);
                var b = Vector512.LoadUnsafe(ref xj, (nuint)k);
                if (_dots) d += a * b;
                if (_distances) { var e = a - b; s += e * e; }
            }
            if (_dots) d.StoreUnsafe(ref dots, l);
            if (_distances) s.StoreUnsafe(ref dists, l);
        }
    }

    private void FlushPanel()
    {
        Flush(_normLanes, _norms);
        Flush(_dotLanes, _dotTotals);
        Flush(_distLanes, _distTotals);
    }

    private static void Flush(double[] lanes, Total[] totals)
    {
        for (int t = 0; t < totals.Length; t++)
        {
            var span = lanes.AsSpan(t * Lanes, Lanes);
            totals[t].Add(FixedOrder.Combine(span));
            span.Clear();
        }
    }

    /// <summary>A running total with Neumaier's compensation.</summary>
    private struct Total
    {
        private double _sum, _compensation;

        public void Add(double x)
        {
            double t = _sum + x;
            _compensation += Math.Abs(_sum) >= Math.Abs(x) ? (_sum - t) + x : (x - t) + _sum;
            _sum = t;
        }

        public readonly double Value => _sum + _compensation;
    }
}
