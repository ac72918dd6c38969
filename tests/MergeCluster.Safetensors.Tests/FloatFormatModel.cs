namespace MergeCluster.Safetensors.Tests;

/// <summary>
/// An independent model of a narrow float format, written from its definition rather than with bit tricks: values
/// come from sign, exponent and mantissa by exact scaling, and rounding finds the two neighbouring finite values and
/// compares against their midpoint, which is exact in float64 because these formats carry at most 11 bits.
/// </summary>
public sealed class FloatFormatModel
{
    private readonly double[] _finite; // non-negative finite values, indexed by code

    private FloatFormatModel(DType type, int exponentBits, int mantissaBits, int bias, bool hasInfinity)
    {
        Type = type;
        ExponentBits = exponentBits;
        MantissaBits = mantissaBits;
        Bias = bias;
        HasInfinity = hasInfinity;
        int maxExponent = (1 << exponentBits) - 1;
        MaxFiniteCode = hasInfinity ? (uint)(maxExponent << mantissaBits) - 1 : (uint)((maxExponent << mantissaBits) | ((1 << mantissaBits) - 1)) - 1;
        _finite = new double[MaxFiniteCode + 1];
        for (uint c = 0; c <= MaxFiniteCode; c++) _finite[c] = Value(c);
    }

    public static readonly FloatFormatModel F16 = new(DType.F16, 5, 10, 15, true);
    public static readonly FloatFormatModel BF16 = new(DType.BF16, 8, 7, 127, true);
    public static readonly FloatFormatModel F8E4M3 = new(DType.F8_E4M3, 4, 3, 7, false);
    public static readonly FloatFormatModel F8E5M2 = new(DType.F8_E5M2, 5, 2, 15, true);
    public static readonly FloatFormatModel[] All = [F16, BF16, F8E4M3, F8E5M2];

    public DType Type { get; }
    public int ExponentBits { get; }
    public int MantissaBits { get; }
    public int Bias { get; }
    public bool HasInfinity { get; }
    public uint MaxFiniteCode { get; }
    public int Width => 1 + ExponentBits + MantissaBits;
    public uint SignBit => 1u << (ExponentBits + MantissaBits);
    public uint CodeCount => 1u << Width;
    public double MaxFinite => _finite[MaxFiniteCode];
    public double MinSubnormal => _finite[1];

    public override string ToString() => Type.Name();

    public bool IsNaN(uint code)
    {
        uint magnitude = code & (SignBit - 1);
        uint exponent = magnitude >> MantissaBits, mantissa = magnitude & ((1u << MantissaBits) - 1);
        uint maxExponent = (1u << ExponentBits) - 1;
        return HasInfinity ? exponent == maxExponent && mantissa != 0 : magnitude == SignBit - 1;
    }

    /// <summary>The value a code denotes.</summary>
    public double Value(uint code)
    {
        bool negative = (code & SignBit) != 0;
        uint magnitude = code & (SignBit - 1);
        int exponent = (int)(magnitude >> MantissaBits);
        int mantissa = (int)(magnitude & ((1u << MantissaBits) - 1));
        double v;
        if (IsNaN(code)) v = double.NaN;
        else if (HasInfinity && exponent == (1 << ExponentBits) - 1) v = double.PositiveInfinity;
        else if (exponent == 0) v = Math.ScaleB(mantissa, 1 - Bias - MantissaBits);
        else v = Math.ScaleB((1 << MantissaBits) + mantissa, exponent - Bias - MantissaBits);
        return negative ? -v : v;
    }

    /// <summary>The code nearest to <paramref name="x"/>, ties to the even code; overflow gives Inf, or NaN for E4M3FN.</summary>
    public uint Round(double x)
    {
        uint sign = double.IsNegative(x) ? SignBit : 0;
        double a = Math.Abs(x);
        uint nan = sign | (HasInfinity ? (((1u << ExponentBits) - 1) << MantissaBits) | (1u << (MantissaBits - 1)) : SignBit - 1);
        uint overflow = HasInfinity ? sign | (((1u << ExponentBits) - 1) << MantissaBits) : nan;
        if (double.IsNaN(x)) return nan;
        // The step above the largest finite value leads to Inf (or, for E4M3FN, to the NaN pattern).
        double top = _finite[MaxFiniteCode];
        double beyond = top + (top - _finite[MaxFiniteCode - 1]);
        uint lower = MaxFiniteCode;
        if (a < top)
        {
            int i = Array.BinarySearch(_finite, a);
            if (i >= 0) return sign | (uint)i;
            lower = (uint)(~i - 1);
            beyond = _finite[lower + 1];
        }
        else if (a == top) return sign | MaxFiniteCode;
        double mid = (_finite[lower] + beyond) / 2;
        bool up = a > mid || (a == mid && (lower & 1) == 1);
        if (!up) return sign | lower;
        return lower == MaxFiniteCode ? overflow : sign | (lower + 1);
    }
}
