using MergeCluster.Merge.Numerics;

namespace MergeCluster.Merge.Methods;

/// <summary>
/// sd-mecha 1.1.5 <c>slerp(a, b, alpha)</c> (merge_methods/linear.py): spherical interpolation of the directions of a
/// and b over the whole tensor, scaled by lerp(‖a‖, ‖b‖, alpha); where that has a NaN (a zero tensor, or a and b
/// parallel so sin ω = 0) sd-mecha returns torch.lerp(a, b, alpha), and so does this. One pass gathers ‖a‖², ‖b‖², a·b.
/// </summary>
public sealed class Slerp(double alpha) : TensorMethod
{
    private readonly PairwiseStatistics _statistics = new(2, PairwiseTerms.Dots);
    private double _normA, _normB, _sinA, _sinB, _sinOmega, _scale;
    private bool _linear;

    public override int Passes => 1;

    public override void Observe(int pass, IReadOnlyList<double[]> inputs, long start, int length) => _statistics.Add(inputs, 0, length);

    public override void EndPass(int pass)
    {
        _statistics.Complete();
        _normA = Math.Sqrt(_statistics.SquaredNorm(0));
        _normB = Math.Sqrt(_statistics.SquaredNorm(1));
        double dot = Math.Clamp(_statistics.Dot(0, 1) / (_normA * _normB), -1.0, 1.0);
        double omega = Math.Acos(dot);
        _sinOmega = Math.Sin(omega);
        _sinA = Math.Sin((1 - alpha) * omega);
        _sinB = Math.Sin(alpha * omega);
        _scale = Lerp(_normA, _normB, alpha);
        // sd-mecha checks the result for NaN; every way to get one shows in these scalars (a NaN or Inf input makes the
        // norms non-finite, a zero tensor a zero norm, parallel tensors sin ω = 0).
        _linear = !(double.IsFinite(_normA) && double.IsFinite(_normB) && _normA > 0 && _normB > 0 && double.IsFinite(dot) && _sinOmega != 0 && double.IsFinite(_scale));
    }

    public override void Compute(IReadOnlyList<double[]> inputs, long start, int length, double[] output)
    {
        double[] a = inputs[0], b = inputs[1];
        for (int e = 0; e < length; e++)
            output[e] = _linear ? Lerp(a[e], b[e], alpha) : (a[e] / _normA * _sinA + b[e] / _normB * _sinB) / _sinOmega * _scale;
    }

    /// <summary>torch.lerp's formula: start + w·(end − start) for w &lt; 0.5, else end − (end − start)·(1 − w).</summary>
    internal static double Lerp(double start, double end, double weight) =>
        weight < 0.5 ? start + weight * (end - start) : end - (end - start) * (1 - weight);
}
