namespace MergeCluster.Safetensors;

/// <summary>Element types a safetensors file can declare, named as in the format's header.</summary>
public enum DType
{
    Bool, U8, I8, I16, U16, I32, U32, I64, U64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2,
}

/// <summary>Facts about each <see cref="DType"/>: size, header name, whether it is a float.</summary>
public static class DTypes
{
    public static int Size(this DType t) => t switch
    {
        DType.Bool or DType.U8 or DType.I8 or DType.F8_E4M3 or DType.F8_E5M2 => 1,
        DType.I16 or DType.U16 or DType.F16 or DType.BF16 => 2,
        DType.I32 or DType.U32 or DType.F32 => 4,
        DType.I64 or DType.U64 or DType.F64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    public static bool IsFloat(this DType t) =>
        t is DType.F16 or DType.BF16 or DType.F32 or DType.F64 or DType.F8_E4M3 or DType.F8_E5M2;

    public static string Name(this DType t) => t switch
    {
        DType.Bool => "BOOL",
        _ => t.ToString(),
    };

    public static bool TryParse(string name, out DType type)
    {
        switch (name)
        {
            case "BOOL": type = DType.Bool; return true;
            case "U8": type = DType.U8; return true;
            case "I8": type = DType.I8; return true;
            case "I16": type = DType.I16; return true;
            case "U16": type = DType.U16; return true;
            case "I32": type = DType.I32; return true;
            case "U32": type = DType.U32; return true;
            case "I64": type = DType.I64; return true;
            case "U64": type = DType.U64; return true;
            case "F16": type = DType.F16; return true;
            case "BF16": type = DType.BF16; return true;
            case "F32": type = DType.F32; return true;
            case "F64": type = DType.F64; return true;
            case "F8_E4M3": type = DType.F8_E4M3; return true;
            case "F8_E5M2": type = DType.F8_E5M2; return true;
            default: type = default; return false;
        }
    }

    /// <summary>Parses the lower-case names users write in recipes and on the command line (f16, bf16, f32, f64).</summary>
    public static bool TryParseUser(string name, out DType type) =>
        TryParse(name.Trim().ToUpperInvariant(), out type) && type.IsFloat();
}
