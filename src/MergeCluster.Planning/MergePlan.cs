using System.Collections.Immutable;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Methods;
using MergeCluster.Merge.Recipes;
using MergeCluster.Safetensors;

namespace MergeCluster.Planning;

/// <summary>
/// An input checkpoint as the plan sees it: its validated header, never its data, and which file it is (inputs that
/// name one file share one header). An unused model has length 0 and no identity.
/// </summary>
public sealed record MergeInput(int Index, string Name, string Path, SafetensorsHeader Header, long Length, FileIdentity Identity);

/// <summary>How an output tensor is produced.</summary>
public enum TensorOp
{
    /// <summary>Σ coefficient·source, summed per reduction group, reduced up the tree, divided and rounded once.</summary>
    Combine,
    /// <summary>One source taken as is (bytes copied when the dtype matches, else converted with one rounding).</summary>
    Copy,
    /// <summary>
    /// A non-linear recipe tree (<see cref="PlannedTensor.Program"/>) over the terms as its leaves: run in one task
    /// that holds every term (fused, or the shard's final task), passes over the tensor as its methods need, rounded once.
    /// </summary>
    Method,
}

/// <summary>One source tensor of an output tensor; <see cref="Group"/> is its leaf in the reduction tree.</summary>
public sealed record TermSource(int Input, TensorInfo Tensor, double Coefficient, int Group);

/// <summary>An output tensor: its place in the output file and what it is made of.</summary>
public sealed record PlannedTensor(
    int Index, TensorInfo Output, Component Component, TensorOp Op, ImmutableArray<TermSource> Terms, double Divisor, string? FilledFrom,
    TensorProgram? Program = null)
{
    public long ElementCount => Output.ElementCount;
    public long InputBytes
    {
        get
        {
            long sum = 0;
            foreach (var t in Terms) sum += t.Tensor.ByteLength;
            return sum;
        }
    }

    /// <summary>Whether any term lies in reduction group <paramref name="group"/>.</summary>
    public bool HasGroup(int group)
    {
        foreach (var t in Terms) if (t.Group == group) return true;
        return false;
    }
}

/// <summary>A contiguous run of output tensors executed as one unit of work.</summary>
public sealed record Shard(int Index, int FirstTensor, int TensorCount, long OutputBytes, long InputBytes)
{
    public IEnumerable<int> TensorIndices => Enumerable.Range(FirstTensor, TensorCount);
}

/// <summary>What the plan does with one component, for `--dry-run`.</summary>
public sealed record ComponentPlan(Component Component, string Method, ImmutableArray<string> Models, int Keys, long OutputBytes, long InputBytes);

/// <summary>Keys of one model filled from the base (a pruned model repaired) or skipped.</summary>
public sealed record MissingSummary(string Model, Component Component, int Keys, string Resolution, ImmutableArray<string> Examples);

/// <summary>
/// The whole merge decided before any tensor data is read: every output tensor with its sources, dtype, shape
/// and byte range, the header, and the shards. Every silo derives the same plan from the same recipe.
/// </summary>
public sealed class MergePlan
{
    public required Recipe Recipe { get; init; }
    public required ImmutableArray<MergeInput> Inputs { get; init; }
    public required ImmutableArray<PlannedTensor> Tensors { get; init; }
    public required SafetensorsLayout Layout { get; init; }
    public required ImmutableArray<Shard> Shards { get; init; }
    /// <summary>Leaves of the reduction tree: ceil(models / reduce group), fixed by the recipe.</summary>
    public required int GroupCount { get; init; }
    public required string OutputPath { get; init; }
    public required ImmutableArray<ComponentPlan> Components { get; init; }
    public required ImmutableArray<MissingSummary> Missing { get; init; }
    public required ImmutableSortedDictionary<string, string> Metadata { get; init; }

    public long OutputBytes => Layout.TotalLength;
    public long InputBytes
    {
        get
        {
            long sum = 0;
            foreach (var s in Shards) sum += s.InputBytes;
            return sum;
        }
    }
}
