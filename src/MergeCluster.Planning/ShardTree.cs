namespace MergeCluster.Planning;

/// <summary>
/// The reduction tree of one shard as the cluster runs it. A node with one non-empty child is that child
/// (no task, no file); only nodes with two non-empty children become reduce tasks.
/// </summary>
public sealed class ShardTree
{
    private readonly MergePlan _plan;
    private readonly Shard _shard;
    private readonly int _groups;

    public ShardTree(MergePlan plan, Shard shard)
    {
        _plan = plan;
        _shard = shard;
        _groups = plan.GroupCount;
        Root = Producer(ReductionTree.Levels(_groups), 0);
    }

    /// <summary>The node whose partial holds the shard's full sums; null when the shard has nothing to combine.</summary>
    public PartialNode? Root { get; }

    /// <summary>The node whose file stands for (level, index): itself, a child it collapses to, or null if empty.</summary>
    public PartialNode? Producer(int level, int index)
    {
        if (level == 0)
        {
            var leaf = new PartialNode(0, index);
            return index < _groups && leaf.HasAny(_plan, _shard) ? leaf : null;
        }
        var left = Producer(level - 1, 2 * index);
        var right = 2 * index + 1 < ReductionTree.Width(_groups, level - 1) ? Producer(level - 1, 2 * index + 1) : null;
        if (left is not null && right is not null) return new PartialNode(level, index);
        return left ?? right;
    }

    /// <summary>The producing nodes of a reduce node's two children.</summary>
    public (PartialNode Left, PartialNode Right) Children(PartialNode node) =>
        (Producer(node.Level - 1, 2 * node.Index)!, Producer(node.Level - 1, 2 * node.Index + 1)!);

    /// <summary>Every node that owns a file, children before parents.</summary>
    public IEnumerable<PartialNode> Producers()
    {
        int levels = ReductionTree.Levels(_groups);
        for (int level = 0; level <= levels; level++)
            for (int i = 0; i < ReductionTree.Width(_groups, level); i++)
                if (Producer(level, i) is { } p && p.Level == level && p.Index == i) yield return p;
    }
}
