using MergeCluster.Merge.Numerics;

namespace MergeCluster.Merge.Methods;

/// <summary>
/// sd-mecha 1.1.5 <c>model_stock(*deltas, cos_eps)</c> (merge_methods/ties.py, after mergekit's model_stock): the mean
/// delta scaled by t = N·cosθ / (1 + (N−1)·cosθ), where cosθ is the mean cosine between consecutive deltas (i, i+1).
/// As sd-mecha's <c>torch.nn.CosineSimilarity(dim=-1)</c>, cosines and so t are per row of the last dimension; a
/// block holds whole rows, so this needs no extra pass. Result torch.nan_to_num(t·mean): NaN → 0, ±Inf → ±max.
/// </summary>
public sealed class ModelStock(TensorContext context, double cosEps) : TensorMethod
{
    public override int RowLength => context.LastDimension;

    public override void Compute(IReadOnlyList<double[]> inputs, long start, int length, double[] output)
    {
        int row = RowLength;
        int n = inputs.Count;
        // Σ deltas per element, inputs in order from +0, one input at a time (sequential memory).
        var sums = output.AsSpan(0, length);
        sums.Clear();
        for (int i = 0; i < n; i++)
        {
            var x = inputs[i].AsSpan(0, length);
            for (int e = 0; e < sums.Length; e++) sums[e] += x[e];
        }
        for (int r = 0; r < length; r += row)
        {
            double t = T(inputs, r, row, cosEps);
            for (int e = r; e < r + row; e++)
            {
                double v = t * (sums[e] / n);
                sums[e] = double.IsNaN(v) ? 0.0 : double.IsPositiveInfinity(v) ? double.MaxValue : double.IsNegativeInfinity(v) ? double.MinValue : v;
            }
        }
    }

    /// <summary>
    /// sd-mecha's <c>get_model_stock_t</c> for one row [offset, offset + length) of the inputs: the cosine of consecutive
    /// inputs as torch's CosineSimilarity, x·y / (max(‖x‖, eps)·max(‖y‖, eps)), averaged; 1 for a single input.
    /// </summary>
    internal static double T(IReadOnlyList<double[]> inputs, int offset, int length, double cosEps)
    {
        int n = inputs.Count;
        if (n < 2) return 1.0;
        double cos = 0;
        double previousNorm = Norm(inputs[0], offset, length, cosEps);
        for (int i = 0; i + 1 < n; i++)
        {
            double norm = Norm(inputs[i + 1], offset, length, cosEps);
            double dot = FixedOrder.Dot(inputs[i].AsSpan(offset, length), inputs[i + 1].AsSpan(offset, length));
            cos += dot / (previousNorm * norm);
            previousNorm = norm;
        }
        cos /= n - 1;
        return n * cos / (1 + (n - 1) * cos);
    }

    private static double Norm(double[] x, int offset, int length, double eps)
    {
        var span = x.AsSpan(offset, length);
        return Math.Max(Math.Sqrt(FixedOrder.Dot(span, span)), eps);
    }
}
