using System.Buffers.Binary;
using FsCheck;
using FsCheck.Fluent;

namespace MergeCluster.Safetensors.Tests;

[Trait("Category", "Kernel")]
public class DTypeConvertTests
{
    public static TheoryData<DType> NarrowTypes => new() { DType.F16, DType.BF16, DType.F8_E4M3, DType.F8_E5M2 };
    public static TheoryData<DType> FloatTypes => new() { DType.F16, DType.BF16, DType.F32, DType.F64, DType.F8_E4M3, DType.F8_E5M2 };

    private static FloatFormatModel Model(DType type) => FloatFormatModel.All.Single(m => m.Type == type);

    private static ulong Code(ReadOnlySpan<byte> bytes, int index, int size) => size switch
    {
        1 => bytes[index],
        2 => BinaryPrimitives.ReadUInt16LittleEndian(bytes[(index * 2)..]),
        4 => BinaryPrimitives.ReadUInt32LittleEndian(bytes[(index * 4)..]),
        _ => BinaryPrimitives.ReadUInt64LittleEndian(bytes[(index * 8)..]),
    };

    private static void PutCode(Span<byte> bytes, int index, int size, ulong code)
    {
        for (int b = 0; b < size; b++) bytes[index * size + b] = (byte)(code >> (8 * b));
    }

    /// <summary>Every code of the format, stored as in a file, and decoded by the kernels to float64 and float32.</summary>
    private static (byte[] Stored, double[] AsDouble, float[] AsSingle) DecodeEveryCode(FloatFormatModel model)
    {
        int size = model.Type.Size();
        var bytes = new byte[model.CodeCount * size];
        for (uint c = 0; c < model.CodeCount; c++) PutCode(bytes, (int)c, size, c);
        var asDouble = new double[model.CodeCount];
        var asSingle = new float[model.CodeCount];
        DTypeConvert.ToFloat64(model.Type, bytes, asDouble);
        DTypeConvert.ToFloat32(model.Type, bytes, asSingle);
        return (bytes, asDouble, asSingle);
    }

    /// <summary>Same bits, or both NaN.</summary>
    private static bool Same(double expected, double actual) =>
        double.IsNaN(expected) ? double.IsNaN(actual) : BitConverter.DoubleToInt64Bits(expected) == BitConverter.DoubleToInt64Bits(actual);

    [Theory, MemberData(nameof(NarrowTypes))]
    public void Every_bit_pattern_decodes_to_the_value_the_format_defines(DType type)
    {
        var model = Model(type);
        var (_, asDouble, asSingle) = DecodeEveryCode(model);
        for (uint c = 0; c < model.CodeCount; c++)
        {
            double expected = model.Value(c);
            Assert.True(Same(expected, asDouble[c]), $"{type} 0x{c:X}: kernel to F64 gave {asDouble[c]}, expected {expected}");
            Assert.True(Same(expected, asSingle[c]), $"{type} 0x{c:X}: kernel to F32 gave {asSingle[c]}, expected {expected}");
            Assert.True(Same(expected, DTypeConvert.ToFloat64(type, c)), $"{type} 0x{c:X}: scalar reference disagrees");
            Assert.Equal(model.IsNaN(c), double.IsNaN(asDouble[c]));
        }
    }

    [Fact]
    public void Every_F16_and_BF16_pattern_decodes_as_dotnet_Half_and_the_float32_top_half()
    {
        var codes = Enumerable.Range(0, 65536).Select(i => (ushort)i).ToArray();
        var bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(codes.AsSpan()).ToArray();
        var f16 = new double[65536];
        var bf16 = new double[65536];
        DTypeConvert.ToFloat64(DType.F16, bytes, f16);
        DTypeConvert.ToFloat64(DType.BF16, bytes, bf16);
        for (int c = 0; c < 65536; c++)
        {
            Assert.True(Same((double)BitConverter.UInt16BitsToHalf((ushort)c), f16[c]), $"F16 0x{c:X4}");
            Assert.True(Same(BitConverter.Int32BitsToSingle(c << 16), bf16[c]), $"BF16 0x{c:X4}");
        }
    }

    [Theory, MemberData(nameof(NarrowTypes))]
    public void Every_bit_pattern_round_trips_through_float32_and_float64(DType type)
    {
        var model = Model(type);
        var (bytes, asDouble, asSingle) = DecodeEveryCode(model);
        var fromDouble = new byte[bytes.Length];
        var fromSingle = new byte[bytes.Length];
        DTypeConvert.FromFloat64(asDouble, type, fromDouble);
        DTypeConvert.FromFloat32(asSingle, type, fromSingle);
        int size = type.Size();
        for (uint c = 0; c < model.CodeCount; c++)
        {
            foreach (var (back, via) in new[] { (fromDouble, "F64"), (fromSingle, "F32") })
            {
                ulong code = Code(back, (int)c, size);
                if (model.IsNaN(c))
                {
                    Assert.True(model.IsNaN((uint)code), $"{type} NaN 0x{c:X} came back via {via} as 0x{code:X}");
                    Assert.Equal(c & model.SignBit, (uint)code & model.SignBit);
                }
                else
                    Assert.True(code == c, $"{type} 0x{c:X} came back via {via} as 0x{code:X}");
            }
        }
    }

    /// <summary>Doubles that probe rounding: exact midpoints and their float64 neighbours, which a detour through float32 would round twice.</summary>
    private static Gen<double> Probes(FloatFormatModel model)
    {
        var near = Gen.Choose(0, (int)model.MaxFiniteCode).Zip(Gen.Choose(0, 6)).Zip(Gen.Choose(0, 1 << 20)).Select(t =>
        {
            var ((code, kind), r) = t;
            double lo = model.Value((uint)code);
            double hi = code == model.MaxFiniteCode ? lo + (lo - model.Value((uint)code - 1)) : model.Value((uint)code + 1);
            double mid = (lo + hi) / 2;
            double x = kind switch
            {
                0 => mid,
                1 => Math.BitIncrement(mid),
                2 => Math.BitDecrement(mid),
                3 => lo,
                4 => mid + (hi - lo) * Math.ScaleB(1, -30), // above mid by less than a float32 ulp of mid
                5 => mid - (hi - lo) * Math.ScaleB(1, -30),
                _ => lo + (hi - lo) * (r / (double)(1 << 20)),
            };
            return (r & 1) == 0 ? x : -x;
        });
        var anyBits = Gen.Choose(int.MinValue, int.MaxValue).Zip(Gen.Choose(int.MinValue, int.MaxValue))
            .Select(t => BitConverter.Int64BitsToDouble(((long)t.Item1 << 32) | (uint)t.Item2));
        int minExponent = 1 - model.Bias - model.MantissaBits - 3, maxExponent = (1 << model.ExponentBits) - model.Bias + 2;
        var scaled = Gen.Choose(minExponent, maxExponent).Zip(Gen.Choose(0, int.MaxValue))
            .Select(t => Math.ScaleB(1 + t.Item2 / (double)int.MaxValue, t.Item1) * ((t.Item2 & 1) == 0 ? 1 : -1));
        return Gen.Frequency((6, near), (2, scaled), (1, anyBits));
    }

    private static double[] Edges(FloatFormatModel model)
    {
        double tiny = model.MinSubnormal, max = model.MaxFinite;
        double step = max - model.Value(model.MaxFiniteCode - 1);
        double[] positive =
        [
            0, tiny, tiny / 2, Math.BitIncrement(tiny / 2), Math.BitDecrement(tiny / 2), tiny * 1.5, tiny / 4, double.Epsilon,
            max, max + step / 2, Math.BitIncrement(max + step / 2), Math.BitDecrement(max + step / 2), max + step, max * 4,
            double.MaxValue, double.PositiveInfinity, 1, 1 + Math.ScaleB(1, -model.MantissaBits - 1),
            1 + Math.ScaleB(1, -model.MantissaBits - 1) + Math.ScaleB(1, -40), 3 * Math.ScaleB(1, -model.MantissaBits - 1) + 1,
            float.MaxValue, float.Epsilon, Math.ScaleB(1, -126), Math.ScaleB(1, -149) * 0.5,
        ];
        return [.. positive, .. positive.Select(x => -x), double.NaN, -double.NaN, BitConverter.Int64BitsToDouble(0x7FF0_0000_0000_0001)];
    }

    private static void AssertRoundsLikeTheModel(FloatFormatModel model, ReadOnlySpan<double> values)
    {
        int size = model.Type.Size();
        var fromDouble = new byte[values.Length * size];
        DTypeConvert.FromFloat64(values, model.Type, fromDouble);
        var singles = new float[values.Length];
        for (int i = 0; i < values.Length; i++) singles[i] = (float)values[i];
        var fromSingle = new byte[values.Length * size];
        DTypeConvert.FromFloat32(singles, model.Type, fromSingle);
        for (int i = 0; i < values.Length; i++)
        {
            AssertCode(model, values[i], Code(fromDouble, i, size), "F64 kernel");
            AssertCode(model, values[i], DTypeConvert.FromFloat64(values[i], model.Type), "F64 scalar");
            AssertCode(model, singles[i], Code(fromSingle, i, size), "F32 kernel");
            AssertCode(model, singles[i], DTypeConvert.FromFloat32(singles[i], model.Type), "F32 scalar");
        }
    }

    private static void AssertCode(FloatFormatModel model, double x, ulong actual, string path)
    {
        uint expected = model.Round(x);
        if (model.IsNaN(expected))
            Assert.True(model.IsNaN((uint)actual) && (actual & model.SignBit) == (expected & model.SignBit),
                $"{model} {path}: {x:R} gave 0x{actual:X}, expected a NaN with sign of 0x{expected:X}");
        else
            Assert.True(actual == expected, $"{model} {path}: {x:R} (0x{BitConverter.DoubleToInt64Bits(x):X16}) gave 0x{actual:X}, expected 0x{expected:X}");
    }

    [Theory, MemberData(nameof(NarrowTypes))]
    public void Narrowing_edge_cases_round_to_nearest_even(DType type) =>
        AssertRoundsLikeTheModel(Model(type), Edges(Model(type)));

    [Theory, MemberData(nameof(NarrowTypes))]
    public void Narrowing_random_doubles_rounds_once_to_nearest_even(DType type)
    {
        var model = Model(type);
        // Arrays of up to 200 elements run through the vector bodies as well as the scalar tails.
        Prop.ForAll(Arb.From(Gen.ArrayOf(Probes(model), 200)), values =>
        {
            AssertRoundsLikeTheModel(model, values);
            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(400));
    }

    [Fact]
    public void Narrowing_from_float64_does_not_round_through_float32()
    {
        // Just above the midpoint between 1 and the next F16; through float32 it would become the midpoint and tie to 1.
        double x = 1 + Math.ScaleB(1, -11) + Math.ScaleB(1, -40);
        Assert.Equal(Math.ScaleB(1, -11), (float)x - 1);
        var dest = new byte[2 * 20];
        DTypeConvert.FromFloat64(Enumerable.Repeat(x, 20).ToArray(), DType.F16, dest);
        Assert.All(Enumerable.Range(0, 20), i => Assert.Equal(0x3C01, BinaryPrimitives.ReadUInt16LittleEndian(dest.AsSpan(2 * i))));
        var bf = new byte[2];
        DTypeConvert.FromFloat64([1 + Math.ScaleB(1, -8) + Math.ScaleB(1, -40)], DType.BF16, bf);
        Assert.Equal(0x3F81, BinaryPrimitives.ReadUInt16LittleEndian(bf));
    }

    [Fact]
    public void E4M3FN_overflow_and_infinity_become_NaN_keeping_the_sign_as_PyTorch_does()
    {
        double[] values = [448, 463.9, 464, 464.0001, 480, 1e6, double.PositiveInfinity, -464.0001, double.NegativeInfinity, -448];
        var dest = new byte[values.Length];
        DTypeConvert.FromFloat64(values, DType.F8_E4M3, dest);
        Assert.Equal(new byte[] { 0x7E, 0x7E, 0x7E, 0x7F, 0x7F, 0x7F, 0x7F, 0xFF, 0xFF, 0xFE }, dest);
    }

    [Fact]
    public void E5M2_and_F16_overflow_to_infinity()
    {
        var e5 = new byte[3];
        DTypeConvert.FromFloat64([57344, 61440, -1e9], DType.F8_E5M2, e5);
        Assert.Equal(new byte[] { 0x7B, 0x7C, 0xFC }, e5);
        var f16 = new byte[4];
        DTypeConvert.FromFloat64([65519.99, 65520], DType.F16, f16);
        Assert.Equal(new byte[] { 0xFF, 0x7B, 0x00, 0x7C }, f16);
    }

    [Theory]
    [MemberData(nameof(FloatTypes))]
    public void Finiteness_read_off_the_encoded_codes_agrees_with_the_values_at_every_overflow_edge(DType type)
    {
        double[] edges = [65519.99, 65520, 3.3961775292304e38, 3.39617752923046e38, 3.4028235677973366e38, double.MaxValue, double.PositiveInfinity, double.NaN, 448, 464.0001, 57344, 61440];
        var specials = edges.SelectMany(e => new[] { e, Math.BitDecrement(e), Math.BitIncrement(e), -e }).ToList();
        var random = new Random(15);
        int overflowing = 0;
        foreach (int length in new[] { 1, 7, 33, 100 })
        {
            foreach (double special in specials)
            {
                for (int at = 0; at < length; at += Math.Max(1, length / 5))
                {
                    var values = new double[length];
                    for (int i = 0; i < length; i++) values[i] = random.NextDouble() * 200 - 100;
                    values[at] = special;
                    var encoded = new byte[length * type.Size()];
                    DTypeConvert.FromFloat64(values, type, encoded);
                    bool expected = DTypeConvert.RoundsFinite(values, type);
                    Assert.True(expected == DTypeConvert.EncodedFinite(values, type, encoded), $"{type}: {special:R} at {at} of {length}: the values say {(expected ? "finite" : "not finite")}");
                    if (!expected) overflowing++;
                }
            }
        }
        Assert.True(overflowing > 0);
    }

    [Fact]
    public void Float64_to_float32_rounds_like_the_hardware_cast()
    {
        Prop.ForAll(Arb.From(Gen.ArrayOf(Probes(FloatFormatModel.BF16), 100)), values =>
        {
            var dest = new byte[values.Length * 4];
            DTypeConvert.FromFloat64(values, DType.F32, dest);
            var viaToFloat32 = new float[values.Length];
            DTypeConvert.ToFloat32(DType.F64, System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()), viaToFloat32);
            for (int i = 0; i < values.Length; i++)
            {
                Assert.True(Same((float)values[i], BitConverter.Int32BitsToSingle((int)Code(dest, i, 4))));
                Assert.True(Same((float)values[i], viaToFloat32[i]));
            }
            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(100));
    }

    /// <summary>Every length from 0 to 67 at offsets 0 to 3: whole vectors, scalar tails and unaligned starts, with guard bytes around the destination.</summary>
    [Theory, MemberData(nameof(FloatTypes))]
    public void Kernels_match_the_scalar_reference_at_every_length_and_offset(DType type)
    {
        int size = type.Size();
        var random = new Random(1234 + (int)type);
        const byte guard = 0xA5;
        for (int length = 0; length <= 67; length++)
            for (int offset = 0; offset <= 3; offset++)
            {
                // Stored codes, decoded both ways.
                var stored = new byte[(offset + length + 2) * size];
                random.NextBytes(stored);
                var codes = stored.AsSpan(offset * size, length * size);
                var doubles = new double[offset + length + 2];
                var singles = new float[offset + length + 2];
                doubles.AsSpan().Fill(-7.5);
                singles.AsSpan().Fill(-7.5f);
                DTypeConvert.ToFloat64(type, codes, doubles.AsSpan(offset, length));
                DTypeConvert.ToFloat32(type, codes, singles.AsSpan(offset, length));
                for (int i = 0; i < length; i++)
                {
                    ulong code = Code(codes, i, size);
                    double expected = DTypeConvert.ToFloat64(type, code);
                    Assert.True(Same(expected, doubles[offset + i]), $"{type} ToFloat64 length {length} offset {offset} index {i}");
                    Assert.True(Same((float)expected, singles[offset + i]), $"{type} ToFloat32 length {length} offset {offset} index {i}");
                }
                Assert.Equal(-7.5, doubles[offset + length]);
                Assert.Equal(-7.5f, singles[offset + length]);
                if (offset > 0) Assert.Equal(-7.5, doubles[offset - 1]);

                // Values that are not exactly representable, encoded both ways.
                var values = new double[offset + length];
                for (int i = 0; i < values.Length; i++) values[i] = (random.NextDouble() - 0.5) * Math.ScaleB(1, random.Next(-30, 20));
                var floats = values.Select(v => (float)v).ToArray();
                var fromDouble = new byte[(offset + length + 2) * size];
                var fromSingle = new byte[(offset + length + 2) * size];
                fromDouble.AsSpan().Fill(guard);
                fromSingle.AsSpan().Fill(guard);
                DTypeConvert.FromFloat64(values.AsSpan(offset, length), type, fromDouble.AsSpan(offset * size, length * size));
                DTypeConvert.FromFloat32(floats.AsSpan(offset, length), type, fromSingle.AsSpan(offset * size, length * size));
                for (int i = 0; i < length; i++)
                {
                    Assert.True(DTypeConvert.FromFloat64(values[offset + i], type) == Code(fromDouble, offset + i, size), $"{type} FromFloat64 length {length} offset {offset} index {i}");
                    Assert.True(DTypeConvert.FromFloat32(floats[offset + i], type) == Code(fromSingle, offset + i, size), $"{type} FromFloat32 length {length} offset {offset} index {i}");
                }
                Assert.All(fromDouble.AsSpan(0, offset * size).ToArray().Concat(fromDouble.AsSpan((offset + length) * size).ToArray()), b => Assert.Equal(guard, b));
                Assert.All(fromSingle.AsSpan(0, offset * size).ToArray().Concat(fromSingle.AsSpan((offset + length) * size).ToArray()), b => Assert.Equal(guard, b));
            }
    }

    /// <summary>
    /// The fused decode-and-accumulate kernel against acc + c·decode(code) computed by the scalar reference, multiply and
    /// add rounded separately: every code of the 8- and 16-bit formats, random codes of the wider ones, at every length
    /// from 0 to 67 and offsets 0 to 3 (vector bodies of every width and scalar tails), with coefficient 1 and others.
    /// </summary>
    [Theory, MemberData(nameof(FloatTypes))]
    public void Accumulate_matches_the_scalar_multiply_then_add(DType type)
    {
        int size = type.Size();
        var random = new Random(99 + (int)type);
        double[] coefficients = [1.0, 0.3, -1.0 / 3, 1e-300, 7.0];
        void Check(ReadOnlySpan<byte> codes, double[] acc, int offset, int length, double c, string where)
        {
            var expected = new double[acc.Length];
            for (int i = 0; i < acc.Length; i++)
            {
                bool inside = i >= offset && i < offset + length;
                double product = inside ? c * DTypeConvert.ToFloat64(type, Code(codes, i - offset, size)) : 0;
                expected[i] = inside ? acc[i] + product : acc[i];
            }
            DTypeConvert.AccumulateFloat64(type, codes[..(length * size)], c, acc.AsSpan(offset, length));
            for (int i = 0; i < acc.Length; i++)
                Assert.True(Same(expected[i], acc[i]), $"{type} c={c} {where} index {i}: {acc[i]:R}, expected {expected[i]:R}");
        }

        if (size <= 2)
        {
            int count = 1 << (8 * size);
            var every = new byte[count * size];
            for (int code = 0; code < count; code++) PutCode(every, code, size, (ulong)code);
            foreach (double c in coefficients)
            {
                var acc = new double[count];
                for (int i = 0; i < count; i++) acc[i] = (random.NextDouble() - 0.5) * Math.ScaleB(1, random.Next(-30, 10));
                acc[0] = -0.0;
                Check(every, acc, 0, count, c, "every code");
            }
        }
        for (int length = 0; length <= 67; length++)
            for (int offset = 0; offset <= 3; offset++)
            {
                var codes = new byte[length * size];
                random.NextBytes(codes);
                var acc = new double[offset + length + 2];
                for (int i = 0; i < acc.Length; i++) acc[i] = (random.NextDouble() - 0.5) * Math.ScaleB(1, random.Next(-30, 10));
                Check(codes, acc, offset, length, coefficients[random.Next(coefficients.Length)], $"length {length} offset {offset}");
            }
    }

    /// <summary>
    /// The f16 kernel decodes vectors of normal numbers by a shorter path and any vector holding a zero, subnormal,
    /// infinity or NaN by the full one. Every special code is placed at every lane of a vector of normal weights (and
    /// alone in a vector), so a vector wrongly sent down the short path decodes that lane wrongly and fails here.
    /// </summary>
    [Theory]
    [InlineData(1.0)]
    [InlineData(0.3)]
    public void F16_accumulate_is_exact_when_one_lane_of_a_vector_is_special(double c)
    {
        ushort[] specials = [0x0000, 0x8000, 0x0001, 0x83FF, 0x03FF, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0x0400, 0x7BFF, 0xFBFF];
        const int lanes = 64; // two 512-bit vectors of codes: both loop bodies and their boundary
        var random = new Random(5);
        var codes = new byte[lanes * 2];
        foreach (ushort special in specials)
            for (int at = 0; at < lanes; at++)
            {
                for (int i = 0; i < lanes; i++)
                    PutCode(codes, i, 2, (ulong)BitConverter.HalfToUInt16Bits((Half)((random.NextDouble() - 0.5) * 0.1 + (i % 2 == 0 ? 0.01 : -0.01))));
                PutCode(codes, at, 2, special);
                var acc = new double[lanes];
                for (int i = 0; i < lanes; i++) acc[i] = (random.NextDouble() - 0.5) * 4;
                var expected = new double[lanes];
                for (int i = 0; i < lanes; i++) expected[i] = acc[i] + c * DTypeConvert.ToFloat64(DType.F16, Code(codes, i, 2));
                DTypeConvert.AccumulateFloat64(DType.F16, codes, c, acc);
                for (int i = 0; i < lanes; i++)
                    Assert.True(Same(expected[i], acc[i]), $"special 0x{special:X4} at lane {at}, index {i}: {acc[i]:R}, expected {expected[i]:R}");
            }
    }

    /// <summary>
    /// The many-term sum against clearing the accumulator and accumulating term by term, bit for bit (NaN payloads
    /// included): one to nine terms of every code of the 16-bit formats in shuffled orders (specials meet normals in
    /// every lane), random codes of the others, coefficients 1 and others mixed, lengths that leave tails of every size.
    /// </summary>
    [Theory, MemberData(nameof(FloatTypes))]
    public unsafe void Sum_of_many_terms_equals_accumulating_them_one_by_one(DType type)
    {
        int size = type.Size();
        var random = new Random(7 + (int)type);
        double[] coefficients = [1.0, 1.0, 0.3, -1.0 / 3, 7.0];
        foreach (int terms in new[] { 1, 2, 3, 9 })
            foreach (int length in new[] { 0, 1, 31, 32, 33, 95, 4096 + 17, size == 2 ? 65536 : 1000 })
            {
                var sources = new byte[terms][];
                var c = new double[terms];
                for (int t = 0; t < terms; t++)
                {
                    sources[t] = new byte[length * size];
                    if (size == 2 && length == 65536)
                    {
                        var order = Enumerable.Range(0, 65536).ToArray();
                        random.Shuffle(order);
                        for (int i = 0; i < length; i++) PutCode(sources[t], i, 2, (ulong)order[i]);
                    }
                    else random.NextBytes(sources[t]);
                    c[t] = coefficients[random.Next(coefficients.Length)];
                }
                var expected = new double[length];
                for (int t = 0; t < terms; t++) DTypeConvert.AccumulateFloat64(type, sources[t], c[t], expected);
                var actual = new double[length];
                Array.Fill(actual, 123.0);
                var handles = sources.Select(b => System.Runtime.InteropServices.GCHandle.Alloc(b, System.Runtime.InteropServices.GCHandleType.Pinned)).ToArray();
                try
                {
                    var pointers = handles.Select(h => h.AddrOfPinnedObject()).ToArray();
                    DTypeConvert.SumFloat64(type, pointers, c, actual);
                }
                finally { foreach (var h in handles) h.Free(); }
                for (int i = 0; i < length; i++)
                    Assert.True(BitConverter.DoubleToInt64Bits(expected[i]) == BitConverter.DoubleToInt64Bits(actual[i]),
                        $"{type}, {terms} terms, length {length}, index {i}: {actual[i]:R}, expected {expected[i]:R}");
            }
    }

    [Theory, MemberData(nameof(FloatTypes))]
    public void Conversions_allocate_nothing(DType type)
    {
        const int n = 1000;
        var stored = new byte[n * type.Size()];
        var doubles = new double[n];
        var singles = new float[n];
        void ConvertAll()
        {
            DTypeConvert.ToFloat64(type, stored, doubles);
            DTypeConvert.ToFloat32(type, stored, singles);
            DTypeConvert.FromFloat64(doubles, type, stored);
            DTypeConvert.FromFloat32(singles, type, stored);
            DTypeConvert.AccumulateFloat64(type, stored, 0.5, doubles);
        }
        ConvertAll(); // first calls may allocate while the runtime initialises
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10; i++) ConvertAll();
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void Mismatched_lengths_and_integer_types_are_refused()
    {
        Assert.Throws<ArgumentException>(() => DTypeConvert.ToFloat64(DType.F16, new byte[5], new double[2]));
        Assert.Throws<ArgumentException>(() => DTypeConvert.ToFloat64(DType.F16, new byte[4], new double[3]));
        Assert.Throws<ArgumentException>(() => DTypeConvert.FromFloat64(new double[3], DType.BF16, new byte[4]));
        Assert.Throws<NotSupportedException>(() => DTypeConvert.ToFloat64(DType.I64, new byte[8], new double[1]));
        Assert.Throws<NotSupportedException>(() => DTypeConvert.FromFloat32(new float[1], DType.U8, new byte[1]));
    }
}
