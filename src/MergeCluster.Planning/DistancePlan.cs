using System.Collections.Immutable;
using MergeCluster.Merge;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Numerics;
using MergeCluster.Safetensors;

namespace MergeCluster.Planning;

/// <summary>
/// One key of a distance map: each model's tensor (null where the model lacks it), and the models whose tensors can be
/// compared, grouped by shape (floating-point tensors) or by dtype and shape (the rest, compared only for identity).
/// </summary>
public sealed record DistanceKey(string Key, Component Component, int Block, ImmutableArray<TensorInfo?> Tensors, ImmutableArray<ImmutableArray<int>> Classes, bool IsFloat)
{
    /// <summary>Bytes read for the key: those of the tensors that have someone to be compared with.</summary>
    public long InputBytes
    {
        get
        {
            long sum = 0;
            foreach (var c in Classes)
                if (c.Length > 1)
                    foreach (int m in c) sum += Tensors[m]!.ByteLength;
            return sum;
        }
    }

    /// <summary>The class (index into <see cref="Classes"/>) of a model holding the key, else -1.</summary>
    public int ClassOf(int model)
    {
        for (int c = 0; c < Classes.Length; c++)
            if (Classes[c].Contains(model)) return c;
        return -1;
    }
}

/// <summary>A contiguous run of keys read as one unit of work; its statistics are one partial of the job's.</summary>
public sealed record DistanceShard(int Index, int FirstKey, int KeyCount, long InputBytes);

/// <summary>
/// Everything `distance` decides before reading a tensor: the models (the base first), the components and blocks
/// compared, every key with the models that hold it, and the shards. Shards are cut at a fixed size, never by thread
/// count, so the statistics (summed per shard, then over shards in order) have the same bits on any machine.
/// </summary>
public sealed class DistancePlan
{
    /// <summary>Input bytes per shard by default: fixed, because the order of the float64 sums follows the shards.</summary>
    public const long ShardBytes = 256L << 20;

    public required ImmutableArray<MergeInput> Models { get; init; }
    /// <summary>Whether model 0 is the base.</summary>
    public required bool HasBase { get; init; }
    public required ModelArchitecture Architecture { get; init; }
    /// <summary>The components compared, in report order.</summary>
    public required ImmutableArray<Component> Components { get; init; }
    /// <summary>Block names (BASE, IN00 ...) when blocks are compared; empty otherwise.</summary>
    public required ImmutableArray<string> Blocks { get; init; }
    public required ImmutableArray<DistanceKey> Keys { get; init; }
    public required ImmutableArray<DistanceShard> Shards { get; init; }

    public int Count => Models.Length;
    public int PairCount => Count * (Count - 1) / 2;
    public long InputBytes => Shards.Sum(s => s.InputBytes);

    /// <summary>Index of pair (i, j), i ≠ j, in the upper triangle, as <see cref="PairwiseStatistics"/> numbers them.</summary>
    public int Pair(int i, int j)
    {
        if (i > j) (i, j) = (j, i);
        return i * (2 * Count - i - 1) / 2 + (j - i - 1);
    }

    /// <summary>`unet,te0`; `te` names SD1's text encoder (te0).</summary>
    public static IReadOnlyList<Component>? ParseComponents(string? text)
    {
        if (string.IsNullOrWhiteSpace(text)) return null;
        var list = new List<Component>();
        foreach (string part in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            list.Add(part == "te" ? Component.Te0 : Merge.Architecture.Components.Parse(part));
        return list;
    }

    /// <summary>The model name of a file: its file name without `.safetensors`.</summary>
    public static string NameOf(string path)
    {
        string name = Path.GetFileName(path);
        return name.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) ? name[..^".safetensors".Length] : name;
    }

    /// <summary>
    /// Reads every header (a pickle, a broken header or a model of another architecture is an error naming the file) and
    /// plans the comparison. <paramref name="components"/> null means every component of the architecture.
    /// </summary>
    /// <param name="shardBytes">Input bytes per shard; every machine that runs the job must use the same.</param>
    public static DistancePlan Create(IReadOnlyList<string> paths, string? basePath, IReadOnlyList<Component>? components, bool blocks, long shardBytes = ShardBytes)
    {
        var ordered = new List<string>();
        if (basePath is not null) ordered.Add(Path.GetFullPath(basePath));
        foreach (string p in paths) ordered.Add(Path.GetFullPath(p));

        var models = ImmutableArray.CreateBuilder<MergeInput>(ordered.Count);
        var names = new Dictionary<string, string>(StringComparer.Ordinal);
        var seen = new Dictionary<FileIdentity, string>();
        for (int i = 0; i < ordered.Count; i++)
        {
            string path = ordered[i];
            using var handle = SafetensorsFile.OpenChecked(path);
            var identity = RegularFile.Identity(handle);
            if (seen.TryGetValue(identity, out string? same))
            {
                if (basePath is not null && i > 0 && same == ordered[0]) continue; // the base named among the models too
                throw new MergeException(same == path ? $"{path}: given twice" : $"{path}: the same file as {same}");
            }
            seen[identity] = path;
            string name = NameOf(path);
            if (names.TryGetValue(name, out string? other))
                throw new MergeException($"{path}: model name '{name}' is also that of {other}; rename one of them");
            names[name] = path;
            var header = SafetensorsFile.ReadHeader(handle, path, out long length);
            models.Add(new MergeInput(models.Count, name, path, header, length, identity));
        }
        if (models.Count < 2) throw new MergeException("distance needs at least two models (or one model and --base)");
        var inputs = models.MoveToImmutable();
        var architecture = DetectCommon(inputs);

        var wanted = components?.Distinct().Order().ToImmutableArray()
            ?? architecture.Components.Where(c => c != Component.Other).ToImmutableArray();
        foreach (var c in wanted)
        {
            if (architecture.IsKnown && !architecture.Components.Contains(c))
                throw new MergeException($"{architecture.Name} has no {c.Name()} (its components: {string.Join(", ", architecture.Components.Select(x => x.Name()))})");
        }

        int perSide = architecture == ModelArchitecture.Sdxl ? 9 : 12;
        var blockNames = blocks ? (perSide == 9 ? UnetBlocks.SdxlNames : UnetBlocks.Sd1Names).ToImmutableArray() : [];

        // Keys by their canonical name, so files that use older aliases still line up.
        var byKey = new SortedDictionary<string, TensorInfo?[]>(StringComparer.Ordinal);
        foreach (var model in inputs)
        {
            foreach (var t in model.Header.Tensors)
            {
                string key = architecture.Canonical(t.Key) ?? t.Key;
                if (!wanted.Contains(architecture.ComponentOf(key))) continue;
                if (!byKey.TryGetValue(key, out var row)) byKey[key] = row = new TensorInfo?[inputs.Length];
                row[model.Index] = t;
            }
        }

        if (components is not null)
            foreach (var c in wanted)
                if (!byKey.Keys.Any(k => architecture.ComponentOf(k) == c))
                    throw new MergeException($"no model holds component {c.Name()} ({string.Join(", ", inputs.Select(m => m.Path))})");

        var keys = ImmutableArray.CreateBuilder<DistanceKey>(byKey.Count);
        foreach (var (key, row) in byKey)
        {
            var component = architecture.ComponentOf(key);
            int block = blocks ? blockNames.IndexOf(UnetBlocks.BlockOf(key, perSide)) : -1;
            bool isFloat = row.All(t => t is null || t.DType.IsFloat());
            keys.Add(new DistanceKey(key, component, block, [.. row], Classify(row, isFloat), isFloat));
        }

        var planned = keys.MoveToImmutable();
        return new DistancePlan
        {
            Models = inputs,
            HasBase = basePath is not null,
            Architecture = architecture,
            Components = wanted,
            Blocks = blockNames,
            Keys = planned,
            Shards = Split(planned, shardBytes),
        };
    }

    /// <summary>Every model must be of one architecture: a file of another is an error that names it.</summary>
    private static ModelArchitecture DetectCommon(ImmutableArray<MergeInput> inputs)
    {
        var detected = inputs.Select(m => ModelArchitecture.Detect(m.Header).Architecture).ToArray();
        int first = Array.FindIndex(detected, a => a.IsKnown);
        if (first < 0) return ModelArchitecture.Unknown;
        for (int i = 0; i < inputs.Length; i++)
        {
            if (detected[i] == detected[first]) continue;
            string what = detected[i].IsKnown ? $"a {detected[i].Name} checkpoint" : "not a recognised SDXL or SD1 checkpoint";
            throw new MergeException($"{inputs[i].Path}: {what}, while {inputs[first].Name} is {detected[first].Name}; models of different architectures cannot be compared");
        }
        return detected[first];
    }

    /// <summary>Models holding the key grouped by shape (and dtype, for non-float keys); groups of one compare with nobody.</summary>
    private static ImmutableArray<ImmutableArray<int>> Classify(TensorInfo?[] row, bool isFloat)
    {
        var classes = new List<List<int>>();
        for (int m = 0; m < row.Length; m++)
        {
            if (row[m] is not { } t) continue;
            var match = classes.FirstOrDefault(c => row[c[0]]!.Shape.SequenceEqual(t.Shape) && (isFloat || row[c[0]]!.DType == t.DType));
            if (match is null) classes.Add([m]);
            else match.Add(m);
        }
        return [.. classes.Select(c => c.ToImmutableArray())];
    }

    private static ImmutableArray<DistanceShard> Split(ImmutableArray<DistanceKey> keys, long shardBytes)
    {
        var shards = ImmutableArray.CreateBuilder<DistanceShard>();
        int first = 0;
        long bytes = 0;
        for (int i = 0; i < keys.Length; i++)
        {
            bytes += keys[i].InputBytes;
            if (bytes >= shardBytes || i == keys.Length - 1)
            {
                shards.Add(new DistanceShard(shards.Count, first, i - first + 1, bytes));
                first = i + 1;
                bytes = 0;
            }
        }
        return shards.ToImmutable();
    }
}
