using System.Collections.Immutable;

namespace MergeCluster.Safetensors;

/// <summary>One tensor's entry in a header: key, dtype, shape and byte range relative to the data section.</summary>
public sealed record TensorInfo(string Key, DType DType, ImmutableArray<long> Shape, long Begin, long End)
{
    public long ByteLength => End - Begin;
    public long ElementCount => ByteLength / DType.Size();

    public string ShapeText => "[" + string.Join(", ", Shape) + "]";

    /// <summary>Element count of a shape with overflow checks; null when it overflows.</summary>
    public static long? CountElements(ReadOnlySpan<long> shape)
    {
        long n = 1;
        foreach (long d in shape)
        {
            if (d < 0) return null;
            try { n = checked(n * d); } catch (OverflowException) { return null; }
        }
        return n;
    }
}

/// <summary>A tensor the writer will lay out: key, dtype and shape, before any byte exists.</summary>
public sealed record TensorSpec(string Key, DType DType, ImmutableArray<long> Shape)
{
    public long ElementCount => TensorInfo.CountElements(Shape.AsSpan()) ?? throw new OverflowException($"shape of '{Key}' overflows");
    public long ByteLength => checked(ElementCount * DType.Size());
}
