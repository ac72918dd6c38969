using MergeCluster.Merge.Synthesis;

namespace MergeCluster.Merge.Tests.Merging;

/// <summary>
/// The merge methods computed the plain way, whole tensors in memory, written from sd-mecha 1.1.5's definitions
/// (merge_methods/ties.py, linear.py) and independent of the engine's streaming passes: distances straight from the
/// vectors, thresholds by sorting, cosines per row. Only DARE's mask is the product's definition (its counter hash).
/// </summary>
public static class MethodReference
{
    public static double[] Subtract(double[] a, double[] b) => a.Select((x, i) => x - b[i]).ToArray();

    public static double[] AddDifference(double[] a, double[] delta, double alpha) => a.Select((x, i) => x + alpha * delta[i]).ToArray();

    public static double Norm(double[] x) => Math.Sqrt(x.Sum(v => v * v));

    public static double Distance(double[] x, double[] y) => Math.Sqrt(x.Select((v, i) => (v - y[i]) * (v - y[i])).Sum());

    /// <summary>sd-mecha geometric_median: Weiszfeld from the mean, on the vectors themselves.</summary>
    public static double[] GeometricMedian(IReadOnlyList<double[]> xs, double eps = 1e-6, int maxIterations = 100, double ftol = 1e-20)
    {
        int n = xs.Count;
        double[] Average(double[] w) => Enumerable.Range(0, xs[0].Length).Select(e => Enumerable.Range(0, n).Sum(i => xs[i][e] * w[i]) / w.Sum()).ToArray();
        var weights = Enumerable.Repeat(1.0, n).ToArray();
        var median = Average(weights);
        double objective = xs.Average(x => Distance(x, median));
        for (int it = 0; it < maxIterations; it++)
        {
            double previous = objective;
            weights = xs.Select(x => 1.0 / Math.Max(Distance(x, median), eps)).ToArray();
            median = Average(weights);
            objective = xs.Average(x => Distance(x, median));
            if (Math.Abs(previous - objective) <= ftol * objective) break;
        }
        return median;
    }

    /// <summary>sd-mecha model_stock over deltas, cosines along the last dimension (rows of <paramref name="row"/> elements).</summary>
    public static double[] ModelStock(IReadOnlyList<double[]> deltas, int row, double cosEps = 1e-6)
    {
        int n = deltas.Count;
        var result = new double[deltas[0].Length];
        for (int r = 0; r < result.Length; r += row)
        {
            double t = StockT(deltas, r, row, cosEps);
            for (int e = r; e < r + row; e++) result[e] = t * (deltas.Sum(d => d[e]) / n);
        }
        return result;
    }

    private static double StockT(IReadOnlyList<double[]> deltas, int offset, int row, double cosEps)
    {
        int n = deltas.Count;
        if (n < 2) return 1;
        double Row(double[] d) => Math.Max(Math.Sqrt(Enumerable.Range(offset, row).Sum(e => d[e] * d[e])), cosEps);
        double cos = 0;
        for (int i = 0; i + 1 < n; i++)
            cos += Enumerable.Range(offset, row).Sum(e => deltas[i][e] * deltas[i + 1][e]) / (Row(deltas[i]) * Row(deltas[i + 1]));
        cos /= n - 1;
        return n * cos / (1 + (n - 1) * cos);
    }

    /// <summary>sd-mecha filter_top_k: keep |x| ≥ the k-th smallest float32 magnitude, k = max(⌊(1 − K)·n⌋, 1), found by sorting.</summary>
    public static double[] TopK(double[] x, double k)
    {
        long rank = Math.Max((long)((1 - k) * x.Length), 1);
        var magnitudes = x.Select(v => (float)Math.Abs(v)).OrderBy(v => v).ToArray();
        double threshold = magnitudes[rank - 1];
        return x.Select(v => Math.Abs(v) >= threshold ? v : v * 0.0).ToArray();
    }

    /// <summary>sd-mecha ties_sum (and ties_sum_extended with its reduction): top-k, sign election, disjoint mean.</summary>
    public static double[] TiesSum(IReadOnlyList<double[]> deltas, double k, bool voteSign = false, bool stock = false, int row = 0)
    {
        int n = deltas.Count, length = deltas[0].Length;
        var filtered = deltas.Select(d => TopK(d, k)).ToArray();
        var counts = new double[length];
        for (int e = 0; e < length; e++)
        {
            double vote = 0;
            for (int i = 0; i < n; i++) vote += voteSign ? filtered[i][e] : Math.Sign(filtered[i][e]);
            int elected = Math.Sign(vote);
            for (int i = 0; i < n; i++)
            {
                if (Math.Sign(filtered[i][e]) == elected) counts[e]++;
                else filtered[i][e] = 0;
            }
        }
        var result = new double[length];
        int r = row == 0 ? length : row;
        for (int start = 0; start < length; start += r)
        {
            double t = stock ? StockT(filtered, start, r, 1e-6) : 1.0;
            for (int e = start; e < start + r; e++)
            {
                double v = filtered.Sum(f => f[e]) * t / counts[e];
                result[e] = double.IsFinite(v) ? v : 0;
            }
        }
        return result;
    }

    /// <summary>DARE's mask: element e of delta i survives with probability 1 − p (the product's counter-hash definition).</summary>
    public static double[] Drop(double[] delta, string key, ulong seed, int input, double probability)
    {
        var bits = new uint[delta.Length];
        CounterHash.Fill(CounterHash.Derive(CounterHash.Derive(CounterHash.KeyStream(key), seed), (ulong)input), 0, bits);
        ulong threshold = (ulong)Math.Round((1 - probability) * 4294967296.0);
        return delta.Select((v, e) => bits[e] < threshold ? v : v * 0.0).ToArray();
    }

    /// <summary>sd-mecha slerp over the whole tensor (lerp where that is NaN).</summary>
    public static double[] Slerp(double[] a, double[] b, double alpha)
    {
        double na = Norm(a), nb = Norm(b);
        double dot = Math.Clamp(a.Select((x, i) => x / na * (b[i] / nb)).Sum(), -1, 1);
        double omega = Math.Acos(dot);
        double scale = na + alpha * (nb - na);
        var result = a.Select((x, i) => (x / na * Math.Sin((1 - alpha) * omega) + b[i] / nb * Math.Sin(alpha * omega)) / Math.Sin(omega) * scale).ToArray();
        return result.Any(double.IsNaN) ? a.Select((x, i) => x + alpha * (b[i] - x)).ToArray() : result;
    }
}
