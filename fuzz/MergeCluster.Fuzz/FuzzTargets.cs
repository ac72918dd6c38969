using System.Text;
using MergeCluster.Merge;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Recipes;
using MergeCluster.Safetensors;

namespace MergeCluster.Fuzz;

/// <summary>
/// What the fuzzer feeds hostile bytes to: the parsers of the two formats a downloaded checkpoint brings, the
/// safetensors header and the recipe in its metadata. Each target throws only the one exception type its parser
/// documents for bad input; anything else (another exception, a hang, a crash) is a bug. The regression tests run
/// every file of fuzz/corpus and fuzz/regressions through these same functions.
/// </summary>
public static class FuzzTargets
{
    /// <summary>Targets by name, as fuzz/run.sh and the tests call them.</summary>
    public static IReadOnlyDictionary<string, Action<byte[]>> All { get; } = new Dictionary<string, Action<byte[]>>
    {
        ["header"] = Header,
        ["recipe"] = Recipe,
        // sd-mecha's .mecha format: the same entry point (the text chooses the parser), its own seeds.
        ["mecha"] = Recipe,
    };

    /// <summary>
    /// The input is a whole file: its length prefix and header are read as a file's are, and a header that parses is
    /// written back by the layout writer and must parse again to the same tensors and metadata.
    /// </summary>
    public static void Header(byte[] file)
    {
        SafetensorsHeader header;
        try
        {
            long n = SafetensorsHeader.ReadHeaderLength(file.AsSpan(0, Math.Min(8, file.Length)), file.Length, "fuzz.safetensors");
            header = SafetensorsHeader.Parse(file.AsSpan(8, (int)n), file.Length - 8 - n, "fuzz.safetensors");
        }
        catch (SafetensorsException) { return; }
        _ = ModelArchitecture.Detect(header);

        var layout = SafetensorsLayout.FromTensors(header.Tensors, header.Metadata);
        var again = SafetensorsHeader.Parse(layout.HeaderBytes.AsSpan(8), header.DataLength, "rewritten.safetensors");
        if (!again.Tensors.SequenceEqual(header.Tensors, TensorEquality.Instance) || !again.Metadata.SequenceEqual(header.Metadata))
            throw new InvalidOperationException("a header written back by the layout parses to other tensors or metadata");
    }

    /// <summary>The input is recipe text (YAML or .mecha), as `--from-metadata` reads it from a downloaded file.</summary>
    public static void Recipe(byte[] bytes)
    {
        Recipe recipe;
        try { recipe = Merge.Recipes.Recipe.Parse(Encoding.UTF8.GetString(bytes), "/fuzz", "fuzz.yaml"); }
        catch (MergeException) { return; }
        for (int i = 0; i < recipe.Models.Length; i++) _ = recipe.ModelPath(i);
        foreach (var component in Components.All) _ = recipe.RuleFor(component);
        try { _ = recipe.OutputPath; }
        catch (MergeException) { }
    }

    private sealed class TensorEquality : IEqualityComparer<TensorInfo>
    {
        public static readonly TensorEquality Instance = new();
        public bool Equals(TensorInfo? a, TensorInfo? b) =>
            a!.Key == b!.Key && a.DType == b.DType && a.Shape.SequenceEqual(b.Shape) && a.Begin == b.Begin && a.End == b.End;
        public int GetHashCode(TensorInfo t) => t.Key.GetHashCode();
    }
}
