namespace MergeCluster.Merge.Methods;

/// <summary>
/// DARE without TIES (Yu et al. 2023, "Language Models are Super Mario"; mergekit's dare_linear): the mean of the
/// deltas after each drops its elements with probability p (<see cref="DropMask"/>), divided by 1 − p when rescaling.
/// sd-mecha has no such method (its ties_sum_with_dropout always elects signs), so this one is MergeCluster's own.
/// </summary>
public sealed class DareSum(TensorContext context, double probability, bool rescale, ulong seed) : TensorMethod
{
    private readonly DropMask _mask = new(context.Key, seed, context.Inputs, probability);
    private double[] _dropped = [];

    public override void Compute(IReadOnlyList<double[]> inputs, long start, int length, double[] output)
    {
        int n = inputs.Count;
        if (_dropped.Length < length) _dropped = new double[length];
        var acc = output.AsSpan(0, length);
        acc.Clear();
        for (int i = 0; i < n; i++)
        {
            _mask.Apply(i, start, inputs[i].AsSpan(0, length), _dropped);
            for (int e = 0; e < length; e++) acc[e] += _dropped[e];
        }
        double divisor = n * (rescale && !Ties.IsCloseToOne(probability) ? 1.0 - probability : 1.0);
        for (int e = 0; e < length; e++) acc[e] /= divisor;
    }
}
