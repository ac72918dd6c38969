using System.Globalization;
using System.Text;
using System.Text.Json;
using MergeCluster.Merge.Architecture;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Engine.Selection;

/// <summary>Full N×N matrices of one component or block: L2 distance, cosine similarity and what each pair compared.</summary>
public sealed class DistanceMatrix
{
    public required string Name { get; init; }
    /// <summary>√Σ(a−b)² over the keys the pair compared; NaN where it compared none.</summary>
    public required double[,] L2 { get; init; }
    /// <summary>a·b / (‖a‖‖b‖) over those keys; NaN where it compared none or a side is all zeros.</summary>
    public required double[,] Cosine { get; init; }
    /// <summary>Floating-point keys of the component (or block) in any model.</summary>
    public required int Keys { get; init; }
    public required int[,] PairKeys { get; init; }
    public required int[,] ShapeMismatches { get; init; }
    public required int[,] OneSided { get; init; }
    public required int[,] NonFiniteKeys { get; init; }

    internal static DistanceMatrix From(string name, DistancePlan plan, PairTotals totals, int keys)
    {
        int n = plan.Count;
        var m = new DistanceMatrix
        {
            Name = name, Keys = keys,
            L2 = new double[n, n], Cosine = new double[n, n],
            PairKeys = new int[n, n], ShapeMismatches = new int[n, n], OneSided = new int[n, n], NonFiniteKeys = new int[n, n],
        };
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < n; j++)
            {
                if (i == j)
                {
                    m.L2[i, i] = 0;
                    m.Cosine[i, i] = 1;
                    continue;
                }
                int p = plan.Pair(i, j);
                int compared = totals.Keys[p];
                m.PairKeys[i, j] = compared;
                m.ShapeMismatches[i, j] = totals.ShapeMismatches[p];
                m.OneSided[i, j] = totals.OneSided[p];
                m.NonFiniteKeys[i, j] = totals.NonFiniteKeys[p];
                if (compared == 0)
                {
                    m.L2[i, j] = m.Cosine[i, j] = double.NaN;
                    continue;
                }
                m.L2[i, j] = Math.Sqrt(Math.Max(0, totals.SquaredDistance[p].Value));
                double norms = Math.Sqrt(totals.NormA[p].Value) * Math.Sqrt(totals.NormB[p].Value);
                m.Cosine[i, j] = norms == 0 ? double.NaN : totals.Dot[p].Value / norms;
            }
        }
        return m;
    }
}

/// <summary>Two models whose component is the same byte for byte: same keys, dtypes, shapes and values (equal content hashes).</summary>
public sealed record IdenticalPair(string Component, string First, string Second);

/// <summary>The result of a distance job: per component and block, the matrices; identical components; non-finite values.</summary>
public sealed class DistanceReport
{
    public required IReadOnlyList<string> Models { get; init; }
    public required string? Base { get; init; }
    public required string Architecture { get; init; }
    public required IReadOnlyList<DistanceMatrix> Components { get; init; }
    public required IReadOnlyList<DistanceMatrix> Blocks { get; init; }
    /// <summary>Per component, the models that hold none of its keys.</summary>
    public required IReadOnlyDictionary<string, IReadOnlyList<string>> Absent { get; init; }
    /// <summary>Per component, NaN and ±Inf values per model (only models with any).</summary>
    public required IReadOnlyDictionary<string, IReadOnlyDictionary<string, long>> NonFinite { get; init; }
    public required IReadOnlyList<IdenticalPair> Identical { get; init; }

    public static DistanceReport Create(DistancePlan plan, DistanceStatistics stats)
    {
        var names = plan.Models.Select(m => m.Name).ToArray();
        var components = new List<DistanceMatrix>();
        var absent = new Dictionary<string, IReadOnlyList<string>>();
        var nonFinite = new Dictionary<string, IReadOnlyDictionary<string, long>>();
        var identical = new List<IdenticalPair>();
        for (int c = 0; c < plan.Components.Length; c++)
        {
            var component = plan.Components[c];
            string name = component.Name();
            int keys = plan.Keys.Count(k => k.Component == component && k.IsFloat);
            components.Add(DistanceMatrix.From(name, plan, stats.Components[c], keys));
            var holds = new bool[plan.Count];
            foreach (var k in plan.Keys)
                if (k.Component == component)
                    for (int m = 0; m < plan.Count; m++) holds[m] |= k.Tensors[m] is not null;
            absent[name] = names.Where((_, m) => !holds[m]).ToArray();
            nonFinite[name] = Enumerable.Range(0, plan.Count).Where(m => stats.NonFiniteValues[c][m] > 0).ToDictionary(m => names[m], m => stats.NonFiniteValues[c][m]);
            for (int i = 0; i < plan.Count; i++)
                for (int j = i + 1; j < plan.Count; j++)
                    if (holds[i] && holds[j] && !stats.Differs[c][plan.Pair(i, j)]) identical.Add(new IdenticalPair(name, names[i], names[j]));
        }
        var blocks = new List<DistanceMatrix>();
        for (int b = 0; b < plan.Blocks.Length; b++)
            blocks.Add(DistanceMatrix.From(plan.Blocks[b], plan, stats.Blocks[b], plan.Keys.Count(k => k.Block == b && k.IsFloat)));
        return new DistanceReport
        {
            Models = names, Base = plan.HasBase ? names[0] : null, Architecture = plan.Architecture.Name,
            Components = components, Blocks = blocks, Absent = absent, NonFinite = nonFinite, Identical = identical,
        };
    }

    /// <summary>
    /// Writes distances.json, a CSV per component and block, and the PNG plots into <paramref name="dir"/> (created if
    /// needed), each whole under a temporary name and renamed, so a reader never sees half a report; returns the files.
    /// </summary>
    public IReadOnlyList<string> WriteFiles(string dir)
    {
        Directory.CreateDirectory(dir);
        var written = new List<string> { WriteText(Path.Combine(dir, "distances.json"), ToJson()) };
        foreach (var c in Components) written.Add(WriteText(Path.Combine(dir, $"{c.Name}.csv"), ToCsv(c)));
        foreach (var b in Blocks) written.Add(WriteText(Path.Combine(dir, $"block-{b.Name}.csv"), ToCsv(b)));
        written.AddRange(DistancePlots.Write(this, dir));
        return written;
    }

    private static string WriteText(string path, string text)
    {
        OutputTemp.WriteWhole(path, System.Text.Encoding.UTF8.GetBytes(text));
        return path;
    }

    /// <summary>Distances to the base (or, without one, to the first model) of every model, per matrix.</summary>
    public static double[] ToReference(DistanceMatrix matrix) => Enumerable.Range(0, matrix.L2.GetLength(0)).Select(i => matrix.L2[0, i]).ToArray();

    /// <summary>The summary lines of identical components, e.g. "te0: s3 = base".</summary>
    public IEnumerable<string> IdenticalLines() =>
        Identical.GroupBy(p => p.Component).Select(g => $"{g.Key}: " + string.Join(", ", g.Select(p => Base is not null && p.First == Base ? $"{p.Second} = {p.First}" : $"{p.First} = {p.Second}")));

    /// <summary>The whole report as one JSON object (full N×N matrices; null where a pair compared no key).</summary>
    public string ToJson()
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteStartArray("models");
            foreach (var m in Models) w.WriteStringValue(m);
            w.WriteEndArray();
            if (Base is null) w.WriteNull("base"); else w.WriteString("base", Base);
            w.WriteString("architecture", Architecture);
            w.WriteStartObject("components");
            foreach (var c in Components)
            {
                w.WritePropertyName(c.Name);
                WriteMatrix(w, c, extra: () =>
                {
                    w.WriteStartArray("absent");
                    foreach (var a in Absent[c.Name]) w.WriteStringValue(a);
                    w.WriteEndArray();
                    w.WriteStartObject("nonfinite");
                    foreach (var (model, count) in NonFinite[c.Name]) w.WriteNumber(model, count);
                    w.WriteEndObject();
                    w.WriteStartArray("identical");
                    foreach (var p in Identical.Where(p => p.Component == c.Name))
                    {
                        w.WriteStartArray();
                        w.WriteStringValue(p.First);
                        w.WriteStringValue(p.Second);
                        w.WriteEndArray();
                    }
                    w.WriteEndArray();
                });
            }
            w.WriteEndObject();
            w.WriteStartObject("blocks");
            foreach (var b in Blocks)
            {
                w.WritePropertyName(b.Name);
                WriteMatrix(w, b, extra: null);
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    private static void WriteMatrix(Utf8JsonWriter w, DistanceMatrix m, Action? extra)
    {
        w.WriteStartObject();
        WriteDoubles(w, "l2", m.L2);
        WriteDoubles(w, "cosine", m.Cosine);
        w.WriteNumber("keys", m.Keys);
        WriteInts(w, "pair_keys", m.PairKeys);
        WriteInts(w, "shape_mismatches", m.ShapeMismatches);
        WriteInts(w, "one_sided", m.OneSided);
        WriteInts(w, "nonfinite_keys", m.NonFiniteKeys);
        extra?.Invoke();
        w.WriteEndObject();
    }

    private static void WriteDoubles(Utf8JsonWriter w, string name, double[,] values)
    {
        w.WriteStartArray(name);
        for (int i = 0; i < values.GetLength(0); i++)
        {
            w.WriteStartArray();
            for (int j = 0; j < values.GetLength(1); j++)
                if (double.IsFinite(values[i, j])) w.WriteNumberValue(values[i, j]); else w.WriteNullValue();
            w.WriteEndArray();
        }
        w.WriteEndArray();
    }

    private static void WriteInts(Utf8JsonWriter w, string name, int[,] values)
    {
        w.WriteStartArray(name);
        for (int i = 0; i < values.GetLength(0); i++)
        {
            w.WriteStartArray();
            for (int j = 0; j < values.GetLength(1); j++) w.WriteNumberValue(values[i, j]);
            w.WriteEndArray();
        }
        w.WriteEndArray();
    }

    /// <summary>One row per pair (i &lt; j): both metrics and what the pair compared.</summary>
    public string ToCsv(DistanceMatrix m)
    {
        var sb = new StringBuilder("model_a,model_b,l2,cosine,keys,shape_mismatches,one_sided,nonfinite_keys\n");
        for (int i = 0; i < Models.Count; i++)
            for (int j = i + 1; j < Models.Count; j++)
                sb.Append(Csv(Models[i])).Append(',').Append(Csv(Models[j])).Append(',')
                  .Append(Number(m.L2[i, j])).Append(',').Append(Number(m.Cosine[i, j])).Append(',')
                  .Append(m.PairKeys[i, j]).Append(',').Append(m.ShapeMismatches[i, j]).Append(',')
                  .Append(m.OneSided[i, j]).Append(',').Append(m.NonFiniteKeys[i, j]).Append('\n');
        return sb.ToString();
    }

    private static string Number(double x) => double.IsFinite(x) ? x.ToString("R", CultureInfo.InvariantCulture) : "";

    private static string Csv(string s) => s.Contains(',') || s.Contains('"') ? "\"" + s.Replace("\"", "\"\"") + "\"" : s;
}
