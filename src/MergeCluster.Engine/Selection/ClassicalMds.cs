using MathNet.Numerics.LinearAlgebra;

namespace MergeCluster.Engine.Selection;

/// <summary>
/// Classical (Torgerson) multidimensional scaling: points in the plane whose distances approximate a distance matrix,
/// from the two largest eigenpairs of the double-centred matrix −½·J·D²·J. Models far from the rest land far away.
/// </summary>
public static class ClassicalMds
{
    /// <summary>Coordinates [n, 2]; pairs without a distance (NaN) take the mean of the known ones.</summary>
    public static double[,] Embed(double[,] distances)
    {
        int n = distances.GetLength(0);
        var result = new double[n, 2];
        if (n < 2) return result;
        double known = 0;
        int count = 0;
        foreach (double d in distances)
            if (double.IsFinite(d)) { known += d; count++; }
        double fill = count > 0 ? known / count : 0;

        var squared = Matrix<double>.Build.Dense(n, n, (i, j) => i == j ? 0 : Square(double.IsFinite(distances[i, j]) ? distances[i, j] : fill));
        var centring = Matrix<double>.Build.DenseIdentity(n) - Matrix<double>.Build.Dense(n, n, 1.0 / n);
        var b = -0.5 * centring * squared * centring;
        b = 0.5 * (b + b.Transpose()); // exactly symmetric, so the symmetric eigensolver applies
        var evd = b.Evd(Symmetricity.Symmetric);
        var order = Enumerable.Range(0, n).OrderByDescending(i => evd.EigenValues[i].Real).ToArray();
        for (int axis = 0; axis < 2 && axis < n; axis++)
        {
            int k = order[axis];
            double lambda = evd.EigenValues[k].Real;
            if (lambda <= 0) continue;
            var v = evd.EigenVectors.Column(k);
            // An eigenvector's sign is arbitrary: fix it so the same matrix always draws the same map.
            double sign = v.AbsoluteMaximum() == v.Maximum() ? 1 : -1;
            for (int i = 0; i < n; i++) result[i, axis] = sign * v[i] * Math.Sqrt(lambda);
        }
        return result;
    }

    private static double Square(double x) => x * x;
}
