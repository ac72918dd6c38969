using System.Collections.Immutable;
using System.Globalization;

namespace MergeCluster.Merge.Methods;

/// <summary>The kind of value a method parameter takes.</summary>
public enum ParameterType { Number, Integer, Boolean, Text }

/// <summary>One parameter of a merge method: its name, type and default (null: none, or sd-mecha's None).</summary>
public sealed record ParameterSpec(string Name, ParameterType Type, object? Default, bool Required = false);

/// <summary>A merge node's parameter values, every parameter of its method bound (defaults filled in).</summary>
public sealed class MethodArguments
{
    private readonly ImmutableSortedDictionary<string, object?> _values;

    internal MethodArguments(ImmutableSortedDictionary<string, object?> values) => _values = values;

    public static MethodArguments Empty { get; } = new(ImmutableSortedDictionary<string, object?>.Empty);

    public IEnumerable<KeyValuePair<string, object?>> Values => _values;

    public object? this[string name] => _values.TryGetValue(name, out var v) ? v : throw new KeyNotFoundException($"no parameter '{name}'");

    public double Number(string name) => this[name] switch
    {
        double d => d,
        long l => l,
        bool b => b ? 1 : 0,
        var other => throw new InvalidOperationException($"parameter '{name}' is {Format(other)}, not a number"),
    };

    public long Integer(string name) => this[name] switch
    {
        long l => l,
        double d when d == Math.Floor(d) && Math.Abs(d) < 9e18 => (long)d,
        var other => throw new InvalidOperationException($"parameter '{name}' is {Format(other)}, not an integer"),
    };

    /// <summary>sd-mecha's bool(value): a number is true when non-zero.</summary>
    public bool Boolean(string name) => this[name] switch
    {
        bool b => b,
        double d => d != 0,
        long l => l != 0,
        var other => throw new InvalidOperationException($"parameter '{name}' is {Format(other)}, not a boolean"),
    };

    public string Text(string name) => this[name] as string ?? throw new InvalidOperationException($"parameter '{name}' is not a string");

    public bool IsNull(string name) => this[name] is null;

    /// <summary>A value as a .mecha or YAML literal: true, 0.5, 100, "text", null.</summary>
    public static string Format(object? value) => value switch
    {
        null => "null",
        bool b => b ? "true" : "false",
        double d => FormatNumber(d),
        long l => l.ToString(CultureInfo.InvariantCulture),
        string s => $"\"{s.Replace("\\", "\\\\").Replace("\"", "\\\"")}\"",
        _ => value.ToString() ?? "",
    };

    /// <summary>A float as Python's repr writes it (1.0, 0.3, 1e-06, 1e-20), so sd-mecha reads it back as a float.</summary>
    public static string FormatNumber(double d)
    {
        string r = d.ToString("R", CultureInfo.InvariantCulture);
        if (r.Contains('E'))
        {
            // .NET writes 1E-06 as "1E-06"; Python writes "1e-06".
            r = r.Replace("E", "e");
            if (!r.Contains('.') && !r.Contains('e')) r += ".0";
            return r;
        }
        return r.Contains('.') || r.Contains("Infinity") || r.Contains("NaN") ? r : r + ".0";
    }
}
