using MergeCluster.Merge.Numerics;

namespace MergeCluster.Merge.Tests.Merging;

/// <summary>The statistics kernels: results fixed by the data alone, whatever the SIMD path or block split.</summary>
[Trait("Category", "Kernel")]
public class StatisticsKernelTests
{
    private static double[][] Vectors(int count, int length, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => Enumerable.Range(0, length).Select(_ => random.NextDouble() - 0.5 + 0.3).ToArray()).ToArray();
    }

    private static double[] Results(PairwiseStatistics s)
    {
        var r = new List<double>();
        for (int i = 0; i < s.Count; i++)
        {
            r.Add(s.SquaredNorm(i));
            for (int j = i + 1; j < s.Count; j++) { r.Add(s.Dot(i, j)); r.Add(s.SquaredDistance(i, j)); }
        }
        return [.. r];
    }

    /// <summary>Feeds the vectors in blocks of the given lengths (cycled), as a pass over chunks would.</summary>
    private static double[] Run(double[][] vectors, SimdPath path, int[] blocks)
    {
        var s = new PairwiseStatistics(vectors.Length, PairwiseTerms.All, path);
        int length = vectors[0].Length;
        var buffers = vectors.Select(_ => new double[length]).ToArray();
        for (int start = 0, b = 0; start < length; b++)
        {
            int n = Math.Min(blocks[b % blocks.Length], length - start);
            for (int i = 0; i < vectors.Length; i++) Array.Copy(vectors[i], start, buffers[i], 0, n);
            s.Add(buffers, 0, n);
            start += n;
        }
        s.Complete();
        return Results(s);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(5)]
    [InlineData(11)]
    public void Every_SIMD_path_and_block_split_gives_the_same_bits(int count)
    {
        var vectors = Vectors(count, 3 * PairwiseStatistics.PanelElements + 1234, count);
        var reference = Run(vectors, SimdPath.Scalar, [vectors[0].Length]);
        foreach (var path in new[] { SimdPath.Scalar, SimdPath.Vector256, SimdPath.Vector512, SimdPath.Auto })
            foreach (var blocks in new[] { new[] { 4096 }, new[] { 1 }, new[] { 7, 4093, 13 }, new[] { 100_000 }, new[] { 3, 8, 4096 * 2 + 5 } })
                Assert.Equal(reference, Run(vectors, path, blocks));
    }

    [Fact]
    public void Statistics_match_their_definitions()
    {
        var v = Vectors(4, 20_000, 7);
        var s = new PairwiseStatistics(4);
        s.Add(v, 0, v[0].Length);
        s.Complete();
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(v[i].Sum(x => x * x), s.SquaredNorm(i), 1e-9);
            for (int j = 0; j < 4; j++)
            {
                double dot = v[i].Select((x, e) => x * v[j][e]).Sum();
                double dist = v[i].Select((x, e) => (x - v[j][e]) * (x - v[j][e])).Sum();
                Assert.Equal(dot, s.Dot(i, j), 1e-9);
                Assert.Equal(dist, s.SquaredDistance(i, j), 1e-9);
                Assert.Equal(dot / Math.Sqrt(v[i].Sum(x => x * x) * v[j].Sum(x => x * x)), s.Cosine(i, j), 12);
            }
        }
    }

    [Fact]
    public void Distances_of_nearly_equal_vectors_keep_their_digits()
    {
        // x and x + 1e-9: a Gram matrix would give ‖x‖² + ‖y‖² − 2x·y, all its digits cancelled.
        var x = Vectors(1, 10_000, 3)[0];
        var y = x.Select(v => v + 1e-9).ToArray();
        var s = new PairwiseStatistics(2);
        s.Add([x, y], 0, x.Length);
        s.Complete();
        Assert.Equal(10_000 * 1e-18, s.SquaredDistance(0, 1), 1e-22);
    }

    [Fact]
    public void Fixed_order_dot_is_the_same_on_every_path()
    {
        var v = Vectors(2, 1003, 5);
        double scalar = FixedOrder.Dot(v[0], v[1], SimdPath.Scalar);
        Assert.Equal(scalar, FixedOrder.Dot(v[0], v[1], SimdPath.Vector256));
        Assert.Equal(scalar, FixedOrder.Dot(v[0], v[1], SimdPath.Vector512));
        Assert.Equal(scalar, FixedOrder.Dot(v[0], v[1]));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(500)]
    [InlineData(9_999)]
    [InlineData(10_000)]
    public void Magnitude_selection_finds_the_kth_smallest_float32_magnitude(long rank)
    {
        var random = new Random((int)rank);
        // Few distinct magnitudes, so many elements tie at any threshold, and a spread of exponents.
        var values = Enumerable.Range(0, 10_000).Select(_ => (random.Next(2) == 0 ? -1 : 1) * Math.Round(random.NextDouble() * 50) * Math.Pow(2, random.Next(-30, 3))).ToArray();
        var selection = new MagnitudeSelection([rank, rank]);
        for (int pass = 0; pass < MagnitudeSelection.Passes; pass++)
        {
            selection.Begin(pass);
            foreach (var chunk in values.Chunk(777))
            {
                selection.Observe(0, chunk);
                selection.Observe(1, chunk.Select(v => v * 3).ToArray());
            }
            selection.End();
        }
        Assert.Equal(values.Select(v => (float)Math.Abs(v)).Order().ElementAt((int)rank - 1), selection.Value(0));
        Assert.Equal(values.Select(v => (float)Math.Abs(v * 3)).Order().ElementAt((int)rank - 1), selection.Value(1));
    }
}
