using MergeCluster.Merge.Numerics;

namespace MergeCluster.Planning;

/// <summary>
/// The fixed pairwise tree over reduction groups: at each level node i adds node i+1, and a node with no partner
/// (or an absent partner) carries up unchanged. Groups absent for a tensor (no term in them) are skipped rather than
/// added as zeros. In-memory reduction and the cluster's reduce tasks follow this one definition, so they agree bit for bit.
/// </summary>
public static class ReductionTree
{
    /// <summary>Number of levels above the leaves for <paramref name="groups"/> leaves.</summary>
    public static int Levels(int groups)
    {
        int levels = 0;
        for (int width = 1; width < groups; width *= 2) levels++;
        return levels;
    }

    /// <summary>Nodes at a level: ceil(groups / 2^level).</summary>
    public static int Width(int groups, int level) => (int)((groups + (1L << level) - 1) >> level);

    /// <summary>Reduces buffers in place; the result is in buffers[0], and its presence is returned.</summary>
    public static bool Reduce(Span<bool> present, double[][] buffers, int groups, int length)
    {
        for (int step = 1; step < groups; step *= 2)
        {
            for (int i = 0; i + step < groups; i += 2 * step)
                CombineInto(present, buffers, i, i + step, length);
        }
        return present[0];
    }

    /// <summary>Node <paramref name="left"/> absorbs node <paramref name="right"/>.</summary>
    public static void CombineInto(Span<bool> present, double[][] buffers, int left, int right, int length)
    {
        if (!present[right]) return;
        if (present[left])
            MergeKernels.Combine(buffers[left].AsSpan(0, length), buffers[right].AsSpan(0, length));
        else
        {
            buffers[right].AsSpan(0, length).CopyTo(buffers[left]);
            present[left] = true;
        }
    }
}
