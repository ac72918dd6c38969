using System.Collections.Immutable;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Architecture;

/// <summary>
/// One key of an architecture's table: its full-size shape and typical dtype, its component, whether a complete
/// checkpoint must hold it, the sd-mecha group it belongs to (clip_l, clip_g, diffuser, vae, ema, scheduler) and
/// the older names it may appear under.
/// </summary>
public sealed record KeySpec(
    string Key,
    DType DType,
    ImmutableArray<long> Shape,
    Component Component,
    bool Required,
    string Group,
    ImmutableArray<string> Aliases)
{
    public long ElementCount => TensorInfo.CountElements(Shape.AsSpan()) ?? throw new OverflowException($"shape of '{Key}' overflows");

    /// <summary>The tensor a writer would lay out for this key at full size in its typical dtype.</summary>
    public TensorSpec ToTensorSpec() => new(Key, DType, Shape);
}
