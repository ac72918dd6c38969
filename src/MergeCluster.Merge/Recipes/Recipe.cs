using System.Collections.Immutable;
using MergeCluster.Merge.Architecture;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Recipes;

/// <summary>How a component's tensors are made from its models.</summary>
public enum MergeMethod { Mean, WeightedSum, AddDifference, Copy, GeometricMedian, ModelStock, Ties, Dare, Slerp }

/// <summary>What to do with a tensor key that a model lacks (a pruned checkpoint).</summary>
public enum MissingPolicy { Base, Skip, Error }

/// <summary>One named input checkpoint, its path as written and the recipe line that declares it.</summary>
public sealed record RecipeModel(string Name, string Path, int Line);

/// <summary>The rule for one component (unet, te0, te1, vae, other) or for all of them.</summary>
public sealed record ComponentRule(
    string Component,
    MergeMethod Method,
    ImmutableArray<string> Models,
    ImmutableArray<double> Weights,
    double Alpha,
    ImmutableSortedDictionary<string, double> BlockAlphas,
    MissingPolicy? Missing,
    int Line)
{
    /// <summary>The method's own settings (k, probability, seed, eps ...), by YAML name; see <see cref="RecipeTrees"/>.</summary>
    public ImmutableSortedDictionary<string, object?> Options { get; init; } = ImmutableSortedDictionary<string, object?>.Empty;
    /// <summary>The base the task vectors of ties, dare and model_stock are taken from: the rule's `base:`, else the recipe's.</summary>
    public string? DeltaBase { get; init; }
}

/// <summary>The language a recipe is written in.</summary>
public enum RecipeFormat { Yaml, Mecha }

/// <summary>Where the merged checkpoint goes (null when the recipe leaves it to `-o`) and the dtype its float tensors are rounded to.</summary>
public sealed record RecipeOutput(string? Path, DType DType, int Line);

/// <summary>
/// A merge recipe: named models, an optional base, one rule per component, the output, and the reduction group size
/// that fixes the summation tree (and so the exact bits of the result) whatever runs it.
/// </summary>
public sealed class Recipe
{
    /// <summary>The rule key that covers every component without a rule of its own.</summary>
    public const string AllComponents = "all";
    public const int DefaultReduceGroup = 8;
    /// <summary>Largest recipe file read: a recipe of 1,000 models is about 50 KB, and its text goes into the output's header.</summary>
    public const long MaxBytes = 1 << 20;

    private readonly Dictionary<string, int> _modelIndex;

    internal Recipe(string source, string directory, string text, ImmutableArray<RecipeModel> models, string? baseModel,
        MissingPolicy missing, ImmutableDictionary<string, ComponentRule> components, RecipeOutput output, int reduceGroup)
    {
        Source = source;
        Directory = directory;
        Text = text;
        Models = models;
        Base = baseModel;
        Missing = missing;
        Components = components;
        Output = output;
        ReduceGroup = reduceGroup;
        _modelIndex = new Dictionary<string, int>(models.Length, StringComparer.Ordinal);
        for (int i = 0; i < models.Length; i++) _modelIndex.TryAdd(models[i].Name, i);
    }

    /// <summary>The file (or label) the recipe came from, for error messages.</summary>
    public string Source { get; }
    /// <summary>Directory that relative model and output paths resolve against.</summary>
    public string Directory { get; }
    /// <summary>The recipe text exactly as read; stored in the output so a merge can be replayed.</summary>
    public string Text { get; }
    public ImmutableArray<RecipeModel> Models { get; }
    public string? Base { get; }
    public MissingPolicy Missing { get; }
    public ImmutableDictionary<string, ComponentRule> Components { get; }
    public RecipeFormat Format { get; private init; }
    /// <summary>A .mecha recipe's tree, over every component (null for YAML, whose trees are per rule).</summary>
    public RecipeNode? Tree { get; private init; }
    /// <summary>The architecture a .mecha recipe's model_config names (sdxl-sgm: SDXL, sd1-ldm: SD1).</summary>
    public ModelArchitecture? ModelConfig { get; private init; }
    public RecipeOutput Output { get; }
    public int ReduceGroup { get; }

    public int ModelIndex(string name) => _modelIndex.TryGetValue(name, out int i) ? i : -1;

    public string ModelPath(int index) => ResolvePath(Models[index].Path);

    /// <summary>The output's absolute path; a recipe whose output names only a dtype needs `-o`.</summary>
    public string OutputPath => ResolvePath(OutputPathAsWritten);

    /// <summary>The output path as the recipe writes it (relative to <see cref="Directory"/>).</summary>
    public string OutputPathAsWritten => Output.Path ?? throw new MergeException(Format == RecipeFormat.Mecha
        ? $"{Source}: the recipe names no output file (a .mecha recipe never does): give -o OUT"
        : $"{Source}:{Output.Line}: output has no path; give output.path in the recipe or -o OUT");

    public string ResolvePath(string path) => System.IO.Path.GetFullPath(System.IO.Path.Combine(Directory, path));

    /// <summary>The rule that governs a component: its own, else "all", else null (the base, if any, is copied).</summary>
    public ComponentRule? RuleFor(Component component) =>
        Components.TryGetValue(component.Name(), out var rule) ? rule : Components.GetValueOrDefault(AllComponents);

    public static Recipe Load(string path)
    {
        string full = System.IO.Path.GetFullPath(path);
        string text;
        // A regular file only: a FIFO named as the recipe is refused instead of blocking the command forever.
        try { text = RegularFile.ReadText(full, MaxBytes, "the recipe"); }
        catch (SafetensorsException e)
        {
            throw new MergeException($"{path}: cannot read recipe: {e.Detail}", e);
        }
        return Parse(text, System.IO.Path.GetDirectoryName(full)!, path);
    }

    /// <summary>Parses YAML, or sd-mecha's .mecha format when the text starts with its `version` line.</summary>
    public static Recipe Parse(string text, string directory, string source)
    {
        // A recipe can arrive inside a downloaded checkpoint (--from-metadata): bounded before either format is parsed.
        if (text.Length > MaxBytes)
            throw new MergeException($"{source}: the recipe is {text.Length:N0} characters, over the {MaxBytes:N0} limit");
        return MechaFormat.IsMecha(text) ? MechaFormat.Parse(text, directory, source) : RecipeParser.Parse(text, directory, source);
    }

    /// <summary>A .mecha recipe: one tree, its models, no rules; the output comes from the command line.</summary>
    internal static Recipe FromTree(string source, string directory, string text, ImmutableArray<RecipeModel> models, RecipeNode tree,
        ModelArchitecture config, RecipeOutput output) =>
        new(source, directory, text, models, null, MissingPolicy.Skip, ImmutableDictionary<string, ComponentRule>.Empty, output, DefaultReduceGroup)
        {
            Format = RecipeFormat.Mecha,
            Tree = tree,
            ModelConfig = config,
        };

    /// <summary>The same recipe with its output sent elsewhere (a replay, or `merge -o`).</summary>
    public Recipe WithOutputPath(string absolutePath) => WithOutput(Output with { Path = System.IO.Path.GetFullPath(absolutePath) });

    /// <summary>The same recipe rounding to another dtype (`merge --dtype`; a .mecha recipe names none).</summary>
    public Recipe WithOutputDType(DType dtype) => WithOutput(Output with { DType = dtype });

    private Recipe WithOutput(RecipeOutput output) =>
        new(Source, Directory, Text, Models, Base, Missing, Components, output, ReduceGroup)
        {
            Format = Format,
            Tree = Tree,
            ModelConfig = ModelConfig,
        };
}
