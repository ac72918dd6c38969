namespace MergeCluster.Planning;

/// <summary>
/// A node of a shard's reduction tree: leaves are groups (level 0); node (l, i) covers groups [i·2^l, (i+1)·2^l).
/// A tensor is present at a node when any of its terms falls in those groups; a partial file holds exactly the
/// present tensors, in plan order.
/// </summary>
public sealed record PartialNode(int Level, int Index)
{
    public int FirstGroup => Index << Level;
    public int LastGroupExclusive => (Index + 1) << Level;

    public bool Has(PlannedTensor tensor)
    {
        if (tensor.Op != TensorOp.Combine) return false;
        foreach (var t in tensor.Terms)
            if (t.Group >= FirstGroup && t.Group < LastGroupExclusive) return true;
        return false;
    }

    public bool HasAny(MergePlan plan, Shard shard)
    {
        foreach (int i in shard.TensorIndices)
            if (Has(plan.Tensors[i])) return true;
        return false;
    }

    public string Name(Shard shard) => $"s{shard.Index:D5}-l{Level}-n{Index}";
}
