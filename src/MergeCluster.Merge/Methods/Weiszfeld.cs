namespace MergeCluster.Merge.Methods;

/// <summary>
/// The geometric median's weights by Weiszfeld iterations on the N×N matrix of squared distances between the points,
/// never on the points: with y = Σ aⱼxⱼ and Σ aⱼ = 1, ‖xᵢ − y‖² = Σⱼ aⱼDᵢⱼ − ½ aᵀDa, so an iteration costs O(N²)
/// instead of a pass over the tensor.
/// </summary>
public static class Weiszfeld
{
    /// <summary>
    /// sd-mecha 1.1.5 <c>geometric_median</c> (sd_mecha/extensions/builtin/merge_methods/ties.py, after
    /// krishnap25/geom_median's weiszfeld_list_of_array): start at the mean; each iteration weighs point i by
    /// 1 / max(‖xᵢ − y‖, eps) and moves y to the weighted mean; stop after <paramref name="maxIterations"/> or when the
    /// objective (mean distance) changes by at most ftol·objective. Returns the weights of the last iterate
    /// (unnormalised: y = Σ wᵢxᵢ / Σ wᵢ), all ones when no iteration ran.
    /// </summary>
    public static double[] Weights(double[,] squaredDistances, double eps, int maxIterations, double ftol)
    {
        int n = squaredDistances.GetLength(0);
        var weights = new double[n];
        Array.Fill(weights, 1.0);
        var a = new double[n];
        Array.Fill(a, 1.0 / n);
        var distances = new double[n];
        double objective = Objective(squaredDistances, a, distances);
        for (int iteration = 0; iteration < Math.Max(0, maxIterations); iteration++)
        {
            double previous = objective;
            double total = 0;
            for (int i = 0; i < n; i++)
            {
                weights[i] = 1.0 / Math.Max(distances[i], eps);
                total += weights[i];
            }
            for (int i = 0; i < n; i++) a[i] = weights[i] / total;
            objective = Objective(squaredDistances, a, distances);
            if (Math.Abs(previous - objective) <= ftol * objective) break;
        }
        return weights;
    }

    /// <summary>Fills ‖xᵢ − y‖ for y = Σ aⱼxⱼ and returns their mean (the objective with unit weights).</summary>
    private static double Objective(double[,] d, double[] a, double[] distances)
    {
        int n = a.Length;
        Span<double> q = n <= 64 ? stackalloc double[n] : new double[n];
        double s = 0;
        for (int i = 0; i < n; i++)
        {
            double qi = 0;
            for (int j = 0; j < n; j++) qi += a[j] * d[i, j];
            q[i] = qi;
            s += a[i] * qi;
        }
        double sum = 0;
        for (int i = 0; i < n; i++)
        {
            distances[i] = Math.Sqrt(Math.Max(0.0, q[i] - 0.5 * s));
            sum += distances[i];
        }
        return sum / n;
    }
}
