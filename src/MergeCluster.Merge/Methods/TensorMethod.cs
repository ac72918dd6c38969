namespace MergeCluster.Merge.Methods;

/// <summary>What a tensor method is created for: the output tensor and its inputs.</summary>
/// <param name="Key">The tensor key (DARE's masks are a function of it).</param>
/// <param name="Shape">The tensor's shape; model stock's cosines run along its last dimension.</param>
/// <param name="Inputs">How many input values each element has.</param>
public sealed record TensorContext(string Key, IReadOnlyList<long> Shape, int Inputs)
{
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (long d in Shape) n *= d;
            return n;
        }
    }

    /// <summary>Elements per row along the last dimension (the whole tensor for 0-d and 1-d).</summary>
    public int LastDimension => Shape.Count == 0 ? 1 : checked((int)Shape[^1]);
}

/// <summary>
/// One non-linear merge method evaluated over a whole tensor: elementwise once it knows per-tensor statistics, which it
/// gathers in <see cref="Passes"/> streaming passes over its inputs first. One instance per tensor evaluation.
/// </summary>
/// <remarks>
/// Memory stays flat: statistics are small (N×N distances, 16-bit histograms, one threshold per input), never a copy
/// of the tensor. A method whose values need whole rows (model stock's cosines) sets <see cref="RowLength"/>, and is
/// then given blocks of whole rows. Every pass sees the blocks in element order, one thread per tensor.
/// </remarks>
public abstract class TensorMethod
{
    /// <summary>Statistics passes before <see cref="Compute"/> can run.</summary>
    public virtual int Passes => 0;

    /// <summary>Row length that every block must be a whole number of; 0 when any split will do.</summary>
    public virtual int RowLength => 0;

    public virtual void BeginPass(int pass) { }

    /// <summary>Statistics over elements [start, start + length): input i's values are inputs[i][0..length).</summary>
    public virtual void Observe(int pass, IReadOnlyList<double[]> inputs, long start, int length) { }

    public virtual void EndPass(int pass) { }

    /// <summary>Writes the method's values for elements [start, start + length) into output[0..length).</summary>
    public abstract void Compute(IReadOnlyList<double[]> inputs, long start, int length, double[] output);

    /// <summary>torch.nan_to_num(x, nan=0, posinf=0, neginf=0).</summary>
    protected static double FiniteOrZero(double x) => double.IsFinite(x) ? x : 0.0;

    /// <summary>torch.sign: −1, 0 or 1, NaN for NaN.</summary>
    protected static double Sign(double x) => x > 0 ? 1.0 : x < 0 ? -1.0 : x == 0 ? 0.0 : double.NaN;
}
