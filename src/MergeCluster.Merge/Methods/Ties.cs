using MergeCluster.Merge.Numerics;

namespace MergeCluster.Merge.Methods;

/// <summary>How TIES combines the deltas that survive the sign election.</summary>
public enum TiesReduction
{
    /// <summary>Their mean (the disjoint mean).</summary>
    Mean,
    /// <summary>Their mean scaled by model stock's t over the filtered deltas (sd-mecha's ties_sum_extended default).</summary>
    Stock,
    /// <summary>The geometric median of the filtered deltas.</summary>
    Median,
}

/// <summary>The settings of one TIES evaluation (see <see cref="Ties"/>).</summary>
public sealed record TiesSettings(
    double K,
    bool VoteSign,
    TiesReduction Reduction = TiesReduction.Mean,
    double CosEps = 1e-6,
    double Eps = 1e-6,
    int MaxIterations = 100,
    double Ftol = 1e-20,
    double DropProbability = 0,
    bool Rescale = true,
    ulong Seed = 0,
    bool Dropout = false);

/// <summary>
/// TIES-merging of task vectors (deltas) as sd-mecha 1.1.5 defines it (merge_methods/ties.py): <c>ties_sum</c>,
/// <c>ties_sum_extended</c> and, with <see cref="TiesSettings.Dropout"/>, <c>ties_sum_with_dropout</c> (DARE first).
/// </summary>
/// <remarks>
/// <para>Per delta i: (DARE) drop each element with probability p (<see cref="DropMask"/>); keep the elements whose
/// magnitude is at least tᵢ, the k-th smallest of float32(|δᵢ|) with k = max(⌊(1 − K)·n⌋, 1), as sd-mecha's
/// <c>filter_top_k</c> (<c>kthvalue</c> of <c>a.abs().float()</c>, then <c>a.abs() &gt;= k_value</c>): every element
/// tied with the threshold is kept, so more than the top K·n may survive. Then per element: the elected sign is
/// sign(Σ sign(fᵢ)) (or sign(Σ fᵢ) with VoteSign); the deltas whose sign equals it are averaged (a tied vote elects 0
/// and gives 0); NaN and ±Inf become 0; with DARE and Rescale the result is divided by 1 − p.</para>
/// <para>The thresholds come from two histogram passes (<see cref="MagnitudeSelection"/>), one when every k is 1; the
/// median reduction adds a distance pass. sd-mecha 1.1.5's ties_sum_extended scales by model stock's t when
/// <c>apply_stock</c> is false and not when it is true (the flag reads inverted); <see cref="TiesReduction"/> names
/// what is computed, and the .mecha reader maps the flag as sd-mecha evaluates it.</para>
/// </remarks>
public sealed class Ties : TensorMethod
{
    private readonly TensorContext _context;
    private readonly TiesSettings _settings;
    private readonly DropMask? _mask;
    private readonly MagnitudeSelection? _selection;
    private readonly int _selectionPasses;
    private readonly double[] _thresholds;
    private readonly double _rescale;
    private PairwiseStatistics? _distances;
    private double[] _medianWeights = [];
    private double _medianTotal;
    private double[][] _filtered = [];
    private double[] _counts = [];
    private double[] _votes = [];
    private readonly bool _zero;

    public Ties(TensorContext context, TiesSettings settings)
    {
        _context = context;
        _settings = settings;
        int n = context.Inputs;
        long elements = context.ElementCount;
        if (settings.Dropout) _mask = new DropMask(context.Key, settings.Seed, n, settings.DropProbability);
        // ties_sum_with_dropout returns 0 when everything is dropped.
        _zero = settings.Dropout && IsCloseToOne(settings.DropProbability);
        _rescale = settings.Dropout && settings.Rescale && !IsCloseToOne(settings.DropProbability) ? 1.0 - settings.DropProbability : 1.0;
        _thresholds = new double[n];
        long rank = Math.Max((long)((1 - settings.K) * elements), 1);
        var ranks = new long[n];
        Array.Fill(ranks, Math.Min(rank, Math.Max(1, elements)));
        _selection = new MagnitudeSelection(ranks);
        _selectionPasses = elements == 0 || _zero ? 0 : MagnitudeSelection.Passes;
        if (settings.Reduction == TiesReduction.Median) _distances = new PairwiseStatistics(n, PairwiseTerms.SquaredDistances);
    }

    public override int Passes => _selectionPasses + (_settings.Reduction == TiesReduction.Median && !_zero ? 1 : 0);

    public override int RowLength => _settings.Reduction == TiesReduction.Stock ? _context.LastDimension : 0;

    public override void BeginPass(int pass)
    {
        if (pass < _selectionPasses) _selection!.Begin(pass);
    }

    public override void Observe(int pass, IReadOnlyList<double[]> inputs, long start, int length)
    {
        if (pass < _selectionPasses)
        {
            for (int i = 0; i < inputs.Count; i++) _selection!.Observe(i, Dropped(inputs, i, start, length));
            return;
        }
        Filter(inputs, start, length);
        _distances!.Add(_filtered, 0, length);
    }

    public override void EndPass(int pass)
    {
        if (pass < _selectionPasses)
        {
            _selection!.End();
            if (pass == _selectionPasses - 1)
                for (int i = 0; i < _thresholds.Length; i++) _thresholds[i] = _selection.Value(i);
            return;
        }
        _distances!.Complete();
        int n = _thresholds.Length;
        var d = new double[n, n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) d[i, j] = _distances.SquaredDistance(i, j);
        _medianWeights = Weiszfeld.Weights(d, _settings.Eps, _settings.MaxIterations, _settings.Ftol);
        _medianTotal = 0;
        foreach (double w in _medianWeights) _medianTotal += w;
    }

    public override void Compute(IReadOnlyList<double[]> inputs, long start, int length, double[] output)
    {
        if (_zero)
        {
            Array.Clear(output, 0, length);
            return;
        }
        Filter(inputs, start, length);
        int n = inputs.Count;
        switch (_settings.Reduction)
        {
            case TiesReduction.Median:
                GeometricMedian.WeightedAverage(_filtered, _medianWeights, _medianTotal, length, output);
                for (int e = 0; e < length; e++) output[e] = FiniteOrZero(output[e]) / _rescale;
                break;
            default:
                {
                    var sums = output.AsSpan(0, length);
                    sums.Clear();
                    for (int i = 0; i < n; i++)
                    {
                        var f = _filtered[i].AsSpan(0, length);
                        for (int e = 0; e < sums.Length; e++) sums[e] += f[e];
                    }
                    int row = _settings.Reduction == TiesReduction.Stock ? RowLength : length;
                    for (int r = 0; r < length; r += row)
                    {
                        double t = _settings.Reduction == TiesReduction.Stock ? ModelStock.T(_filtered, r, row, _settings.CosEps) : 1.0;
                        for (int e = r; e < r + row; e++) sums[e] = FiniteOrZero(sums[e] * t / _counts[e]) / _rescale;
                    }
                    break;
                }
        }
    }

    /// <summary>Input i's values over the block after DARE's drop (the input itself without dropout).</summary>
    private ReadOnlySpan<double> Dropped(IReadOnlyList<double[]> inputs, int i, long start, int length)
    {
        if (_mask is null) return inputs[i].AsSpan(0, length);
        EnsureScratch(inputs.Count, length);
        _mask.Apply(i, start, inputs[i].AsSpan(0, length), _filtered[i].AsSpan(0, length));
        return _filtered[i].AsSpan(0, length);
    }

    /// <summary>Fills the filtered deltas (top-k, then sign election) and the per-element count of surviving deltas.</summary>
    private void Filter(IReadOnlyList<double[]> inputs, long start, int length)
    {
        int n = inputs.Count;
        EnsureScratch(n, length);
        for (int i = 0; i < n; i++)
        {
            var values = Dropped(inputs, i, start, length);
            var f = _filtered[i].AsSpan(0, length);
            double threshold = _thresholds[i];
            for (int e = 0; e < length; e++) f[e] = values[e] * (Math.Abs(values[e]) >= threshold ? 1.0 : 0.0);
        }
        // Per element, in input order: the vote, the elected sign, then each delta kept or zeroed and counted. The
        // loops run input by input over the block, so memory is read in sequence.
        var votes = _votes.AsSpan(0, length);
        var counts = _counts.AsSpan(0, length);
        votes.Clear();
        counts.Clear();
        for (int i = 0; i < n; i++)
        {
            var f = _filtered[i].AsSpan(0, length);
            if (_settings.VoteSign) for (int e = 0; e < f.Length; e++) votes[e] += f[e];
            else for (int e = 0; e < f.Length; e++) votes[e] += Sign(f[e]);
        }
        for (int e = 0; e < votes.Length; e++) votes[e] = Sign(votes[e]);
        for (int i = 0; i < n; i++)
        {
            var f = _filtered[i].AsSpan(0, length);
            for (int e = 0; e < f.Length; e++)
            {
                double keep = Sign(f[e]) == votes[e] ? 1.0 : 0.0;
                f[e] *= keep;
                counts[e] += keep;
            }
        }
    }

    private void EnsureScratch(int n, int length)
    {
        if (_filtered.Length == n && _filtered[0].Length >= length) return;
        _filtered = new double[n][];
        for (int i = 0; i < n; i++) _filtered[i] = new double[length];
        _counts = new double[length];
        _votes = new double[length];
    }

    internal static bool IsCloseToOne(double x) => Math.Abs(x - 1.0) <= 1e-9 * Math.Max(Math.Abs(x), 1.0);
}
