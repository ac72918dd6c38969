using System.Collections.Immutable;
using System.Reflection;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Architecture;

/// <summary>Reads an embedded key table (NAME-keys.tsv: key, shape, dtype) and its sidecar (NAME-keys-meta.tsv: key, group, required|optional, aliases, numel).</summary>
internal static class KeyTable
{
    public static IReadOnlyList<KeySpec> Load(string name, Func<string, Component> componentOf)
    {
        string[] keys = ReadLines($"{name}-keys.tsv");
        string[] meta = ReadLines($"{name}-keys-meta.tsv");
        if (keys.Length != meta.Length)
            throw new InvalidDataException($"key table {name}: {keys.Length} rows but {meta.Length} meta rows");
        var specs = new KeySpec[keys.Length];
        for (int i = 0; i < keys.Length; i++)
        {
            string[] k = keys[i].Split('\t');
            string[] m = meta[i].Split('\t');
            if (k.Length != 3 || m.Length != 5 || k[0] != m[0])
                throw new InvalidDataException($"key table {name}: row {i + 1} is malformed or out of step with its meta row");
            if (!DTypes.TryParse(k[2], out var dtype))
                throw new InvalidDataException($"key table {name}: row {i + 1} has unknown dtype '{k[2]}'");
            var shape = k[1].Length == 0 ? ImmutableArray<long>.Empty : k[1].Split(',').Select(long.Parse).ToImmutableArray();
            var aliases = m[3].Length == 0 ? ImmutableArray<string>.Empty : m[3].Split(';').ToImmutableArray();
            var spec = new KeySpec(k[0], dtype, shape, componentOf(k[0]), m[2] == "required", m[1], aliases);
            if (spec.ElementCount != long.Parse(m[4]))
                throw new InvalidDataException($"key table {name}: '{k[0]}' has shape {k[1]} but numel {m[4]}");
            specs[i] = spec;
        }
        return specs;
    }

    private static string[] ReadLines(string file)
    {
        using var stream = typeof(KeyTable).Assembly.GetManifestResourceStream($"MergeCluster.Architecture.{file}")
            ?? throw new InvalidDataException($"embedded key table {file} is missing from the assembly");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd().Replace("\r", "").Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }
}
