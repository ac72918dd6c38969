using MergeCluster.Merge.Numerics;

namespace MergeCluster.Merge.Methods;

/// <summary>
/// sd-mecha 1.1.5 <c>geometric_median(*models, eps, maxiter, ftol)</c> (merge_methods/ties.py): the point minimising
/// the sum of L2 distances (over the whole tensor) to the inputs, by Weiszfeld iterations. One pass gathers the
/// squared distances between the inputs; the iterations run on that N×N matrix (<see cref="Weiszfeld"/>); the output
/// pass is Σ wᵢxᵢ / Σ wᵢ, as sd-mecha's weighted_average.
/// </summary>
public sealed class GeometricMedian(int inputs, double eps, int maxIterations, double ftol) : TensorMethod
{
    private readonly PairwiseStatistics _statistics = new(inputs, PairwiseTerms.SquaredDistances);
    private double[] _weights = [];
    private double _total;

    public override int Passes => 1;

    public override void Observe(int pass, IReadOnlyList<double[]> inputs, long start, int length) => _statistics.Add(inputs, 0, length);

    public override void EndPass(int pass)
    {
        _statistics.Complete();
        var d = new double[inputs, inputs];
        for (int i = 0; i < inputs; i++)
            for (int j = 0; j < inputs; j++) d[i, j] = _statistics.SquaredDistance(i, j);
        _weights = Weiszfeld.Weights(d, eps, maxIterations, ftol);
        _total = 0;
        foreach (double w in _weights) _total += w;
    }

    public override void Compute(IReadOnlyList<double[]> inputs, long start, int length, double[] output) =>
        WeightedAverage(inputs, _weights, _total, length, output);

    /// <summary>output[e] = (Σᵢ wᵢ·xᵢ[e]) / total, the sum in input order from +0.</summary>
    internal static void WeightedAverage(IReadOnlyList<double[]> inputs, double[] weights, double total, int length, double[] output)
    {
        var acc = output.AsSpan(0, length);
        acc.Clear();
        for (int i = 0; i < inputs.Count; i++)
        {
            double w = weights[i];
            var x = inputs[i].AsSpan(0, length);
            for (int e = 0; e < acc.Length; e++) acc[e] += x[e] * w;
        }
        for (int e = 0; e < acc.Length; e++) acc[e] /= total;
    }
}
