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

    /// <summary>A float the way sd-mecha's parser reads a float back: with a '.' or an exponent (1.0, 0.3, 1e-06).</summary>
    public static string FormatNumber(double d)
    {
        string r = d.ToString("R", CultureInfo.InvariantCulture).Replace("E", "e");
        return r.Contains('.') || r.Contains('e') || !double.IsFinite(d) ? r : r + ".0";
    }
}
