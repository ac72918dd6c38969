using System.Collections.Immutable;
using System.Globalization;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Methods;
using MergeCluster.Safetensors;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.RepresentationModel;

namespace MergeCluster.Merge.Recipes;

/// <summary>Reads recipe YAML into a <see cref="Recipe"/>, reporting every mistake with its file and line.</summary>
internal static class RecipeParser
{
    private static readonly string[] TopLevelKeys = ["models", "base", "missing", "components", "output", "reduce"];

    /// <summary>Deepest nesting of mappings and sequences a recipe may have; real recipes need 4.</summary>
    public const int MaxDepth = 32;

    public static Recipe Parse(string text, string directory, string source)
    {
        YamlMappingNode root;
        long line = 1;
        try
        {
            CheckStructure(text, source, ref line);
            var stream = new YamlStream();
            stream.Load(new StringReader(text));
            if (stream.Documents.Count == 0 || stream.Documents[0].RootNode is not YamlMappingNode map)
                throw new MergeException($"{source}:1: a recipe must be a YAML mapping with models, components and output");
            root = map;
        }
        catch (YamlException e)
        {
            throw new MergeException($"{source}:{e.Start.Line}: invalid YAML: {OneLine(e.Message)}", e);
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException)
        {
            // YamlDotNet's scanner and loader throw these too for some malformed input (found by fuzzing: a tag that
            // is no URI, an escape past U+10FFFF, a stray document marker). Still bad input: one line, the last line read.
            throw new MergeException($"{source}:{line}: invalid YAML: {OneLine(e.Message)}", e);
        }

        var ctx = new Context(source);
        foreach (var (k, _) in root.Children)
        {
            string key = ctx.Scalar(k, "key");
            if (!TopLevelKeys.Contains(key))
                throw ctx.Error(k, $"unknown recipe key '{key}' (expected one of: {string.Join(", ", TopLevelKeys)})");
        }

        var models = ParseModels(ctx, root);
        string? baseName = null;
        if (Find(root, "base") is { } baseNode)
        {
            baseName = ctx.Scalar(baseNode, "base");
            if (!models.Any(m => m.Name == baseName))
                throw ctx.Error(baseNode, $"base '{baseName}' is not a model named under models");
        }

        var missing = Find(root, "missing") is { } missingNode ? ParseMissing(ctx, missingNode) : (baseName is null ? MissingPolicy.Error : MissingPolicy.Base);
        var components = ParseComponents(ctx, root, models, baseName);
        var output = ParseOutput(ctx, root);
        int group = Recipe.DefaultReduceGroup;
        if (Find(root, "reduce") is YamlMappingNode reduce)
        {
            foreach (var (k, _) in reduce.Children)
            {
                string key = ctx.Scalar(k, "key");
                if (key != "group") throw ctx.Error(k, $"unknown reduce field '{key}' (expected group)");
            }
            if (Find(reduce, "group") is { } g)
            {
                group = ctx.Int(g, "reduce.group");
                if (group < 1) throw ctx.Error(g, "reduce.group must be at least 1");
            }
        }
        else if (Find(root, "reduce") is { } bad)
            throw ctx.Error(bad, "reduce must be a mapping, e.g. reduce: { group: 8 }");

        if (missing == MissingPolicy.Base && baseName is null && Find(root, "missing") is { } mNode)
            throw ctx.Error(mNode, "missing: base needs a base model (add `base: NAME`)");

        return new Recipe(source, directory, text, models, baseName, missing, components, output, group);
    }

    private static ImmutableArray<RecipeModel> ParseModels(Context ctx, YamlMappingNode root)
    {
        if (Find(root, "models") is not { } node)
            throw ctx.Error(root, "recipe has no models: section");
        if (node is not YamlMappingNode map || map.Children.Count == 0)
            throw ctx.Error(node, "models must map at least one name to a checkpoint path");
        var list = ImmutableArray.CreateBuilder<RecipeModel>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (k, v) in map.Children)
        {
            string name = ctx.Scalar(k, "model name");
            if (!names.Add(name)) throw ctx.Error(k, $"model '{name}' is named twice");
            string path = ctx.Path(v, $"path of model '{name}'");
            list.Add(new RecipeModel(name, path, Line(k)));
        }
        return list.ToImmutable();
    }

    private static ImmutableDictionary<string, ComponentRule> ParseComponents(Context ctx, YamlMappingNode root, ImmutableArray<RecipeModel> models, string? baseName)
    {
        var rules = ImmutableDictionary.CreateBuilder<string, ComponentRule>(StringComparer.Ordinal);
        if (Find(root, "components") is not { } node)
        {
            if (baseName is null) throw ctx.Error(root, "recipe has neither components: nor a base to copy");
            return rules.ToImmutable();
        }
        if (node is not YamlMappingNode map)
            throw ctx.Error(node, "components must map unet, te0, te1, vae, other or all to a rule");
        foreach (var (k, v) in map.Children)
        {
            string component = ctx.Scalar(k, "component");
            if (component != Recipe.AllComponents && !Components.TryParse(component, out _))
                throw ctx.Error(k, $"unknown component '{component}' (expected unet, te0, te1, vae, other or all)");
            if (rules.ContainsKey(component)) throw ctx.Error(k, $"component '{component}' has two rules");
            if (v is not YamlMappingNode rule) throw ctx.Error(v, $"rule for {component} must be a mapping with a method");
            rules[component] = ParseRule(ctx, component, rule, models, baseName);
        }
        return rules.ToImmutable();
    }

    private static ComponentRule ParseRule(Context ctx, string component, YamlMappingNode rule, ImmutableArray<RecipeModel> models, string? recipeBase)
    {
        if (Find(rule, "method") is not { } methodNode) throw ctx.Error(rule, $"rule for {component} has no method");
        string methodName = ctx.Scalar(methodNode, "method");
        MergeMethod method = methodName switch
        {
            "mean" or "average" => MergeMethod.Mean,
            "weighted_sum" => MergeMethod.WeightedSum,
            "add_difference" => MergeMethod.AddDifference,
            "copy" => MergeMethod.Copy,
            "geometric_median" => MergeMethod.GeometricMedian,
            "model_stock" => MergeMethod.ModelStock,
            "ties" => MergeMethod.Ties,
            "dare" => MergeMethod.Dare,
            "slerp" => MergeMethod.Slerp,
            _ => throw ctx.Error(methodNode, $"unknown method '{methodName}' (expected mean, weighted_sum, add_difference, copy, geometric_median, model_stock, ties, dare or slerp)"),
        };
        var optionSpecs = RecipeTrees.Options(method);
        string[] allowed = ["method", "models", "model", "weights", "alpha", "alphas", "missing", "base", .. optionSpecs.Select(o => o.Name)];
        foreach (var (k, _) in rule.Children)
        {
            string key = ctx.Scalar(k, "key");
            if (!allowed.Contains(key)) throw ctx.Error(k, $"unknown field '{key}' in the {component} rule");
        }

        ImmutableArray<string> names;
        YamlNode listNode;
        if (method == MergeMethod.Copy)
        {
            listNode = Find(rule, "model") ?? Find(rule, "models") ?? throw ctx.Error(rule, $"copy for {component} needs model: NAME");
            names = listNode is YamlSequenceNode ? ctx.Names(listNode, "models") : [ctx.Scalar(listNode, "model")];
            if (names.Length != 1) throw ctx.Error(listNode, $"copy for {component} takes exactly one model");
        }
        else
        {
            listNode = Find(rule, "models") ?? throw ctx.Error(rule, $"{methodName} for {component} needs models: [...]");
            names = ctx.Names(listNode, "models");
        }
        if (names.IsEmpty) throw ctx.Error(listNode, $"{methodName} for {component} has an empty model list");
        foreach (string n in names)
            if (!models.Any(m => m.Name == n)) throw ctx.Error(listNode, $"unknown model '{n}' in the {component} rule (not named under models)");
        if (names.Distinct().Count() != names.Length) throw ctx.Error(listNode, $"a model appears twice in the {component} rule");

        int expected = method switch { MergeMethod.WeightedSum or MergeMethod.Slerp => 2, MergeMethod.AddDifference => 3, _ => -1 };
        if (expected > 0 && names.Length != expected)
            throw ctx.Error(listNode, $"{methodName} takes exactly {expected} models, got {names.Length}");

        var weights = ImmutableArray<double>.Empty;
        if (Find(rule, "weights") is { } wNode)
        {
            if (method != MergeMethod.Mean) throw ctx.Error(wNode, "weights apply only to method mean");
            if (wNode is not YamlSequenceNode seq) throw ctx.Error(wNode, "weights must be a list of numbers");
            weights = seq.Children.Select(c => ctx.Double(c, "weight")).ToImmutableArray();
            if (weights.Length != names.Length) throw ctx.Error(wNode, $"{weights.Length} weights for {names.Length} models");
            if (weights.Any(w => w < 0)) throw ctx.Error(wNode, "weights must not be negative");
            if (weights.Sum() <= 0) throw ctx.Error(wNode, "weights must not all be zero");
        }

        double alpha = RecipeTrees.DefaultAlpha(method) ?? 0;
        if (Find(rule, "alpha") is { } aNode)
        {
            if (method is MergeMethod.Mean or MergeMethod.Copy or MergeMethod.GeometricMedian) throw ctx.Error(aNode, $"alpha does not apply to {methodName}");
            alpha = ctx.Double(aNode, "alpha");
        }
        else if (method is MergeMethod.WeightedSum or MergeMethod.AddDifference)
            throw ctx.Error(rule, $"{methodName} for {component} needs alpha");

        string? deltaBase = null;
        if (Find(rule, "base") is { } rbNode)
        {
            if (!RecipeTrees.NeedsBase(method)) throw ctx.Error(rbNode, $"base does not apply to {methodName} (only ties, dare and model_stock take task vectors from a base)");
            deltaBase = ctx.Scalar(rbNode, "base");
            if (!models.Any(m => m.Name == deltaBase)) throw ctx.Error(rbNode, $"base '{deltaBase}' is not a model named under models");
        }
        else if (RecipeTrees.NeedsBase(method))
            deltaBase = recipeBase ?? throw ctx.Error(rule, $"{methodName} for {component} takes task vectors from a base: add `base: NAME` to the rule or the recipe");

        var options = ImmutableSortedDictionary.CreateBuilder<string, object?>(StringComparer.Ordinal);
        foreach (var spec in optionSpecs)
        {
            if (Find(rule, spec.Name) is not { } oNode) continue;
            object value = spec.Type switch
            {
                ParameterType.Integer => (long)ctx.Int(oNode, spec.Name),
                ParameterType.Boolean => ctx.Bool(oNode, spec.Name),
                _ => ctx.Double(oNode, spec.Name),
            };
            if (spec.Name is "k" or "probability" && value is double p && p is < 0 or > 1)
                throw ctx.Error(oNode, $"{spec.Name} must be between 0 and 1, got {p}");
            options[spec.Name] = value;
        }

        var blocks = ImmutableSortedDictionary<string, double>.Empty;
        if (Find(rule, "alphas") is { } bNode)
        {
            if (method != MergeMethod.WeightedSum) throw ctx.Error(bNode, "per-block alphas apply only to weighted_sum");
            blocks = ParseBlockAlphas(ctx, bNode);
        }

        MissingPolicy? missing = Find(rule, "missing") is { } mNode ? ParseMissing(ctx, mNode) : null;
        return new ComponentRule(component, method, names, weights, alpha, blocks, missing, Line(rule)) { Options = options.ToImmutable(), DeltaBase = deltaBase };
    }

    private static ImmutableSortedDictionary<string, double> ParseBlockAlphas(Context ctx, YamlNode node)
    {
        var result = ImmutableSortedDictionary.CreateBuilder<string, double>(StringComparer.Ordinal);
        if (node is YamlMappingNode map)
        {
            foreach (var (k, v) in map.Children)
            {
                string block = ctx.Scalar(k, "block").ToUpperInvariant();
                if (!Numerics.UnetBlocks.IsBlockName(block))
                    throw ctx.Error(k, $"unknown block '{block}' (expected BASE, IN00-IN11, M00 or OUT00-OUT11)");
                result[block] = ctx.Double(v, $"alpha of {block}");
            }
        }
        else if (node is YamlSequenceNode seq)
        {
            var names = Numerics.UnetBlocks.NamesForCount(seq.Children.Count)
                ?? throw ctx.Error(node, $"a list of block alphas has {seq.Children.Count} values; expected 26 (SD1: BASE, IN00-IN11, M00, OUT00-OUT11) or 20 (SDXL: BASE, IN00-IN08, M00, OUT00-OUT08)");
            for (int i = 0; i < names.Count; i++) result[names[i]] = ctx.Double(seq.Children[i], $"alpha of {names[i]}");
        }
        else throw ctx.Error(node, "alphas must be a list or a mapping of block names to numbers");
        return result.ToImmutable();
    }

    private static MissingPolicy ParseMissing(Context ctx, YamlNode node) => ctx.Scalar(node, "missing") switch
    {
        "base" => MissingPolicy.Base,
        "skip" => MissingPolicy.Skip,
        "error" => MissingPolicy.Error,
        var other => throw ctx.Error(node, $"unknown missing policy '{other}' (expected base, skip or error)"),
    };

    private static RecipeOutput ParseOutput(Context ctx, YamlMappingNode root)
    {
        if (Find(root, "output") is not { } node) throw ctx.Error(root, "recipe has no output: section");
        if (node is YamlScalarNode scalar) return new RecipeOutput(OutputPath(ctx, scalar), DType.F16, Line(node));
        if (node is not YamlMappingNode map) throw ctx.Error(node, "output must be a path or { path: ..., dtype: ... }");
        foreach (var (k, _) in map.Children)
        {
            string key = ctx.Scalar(k, "key");
            if (key is not ("path" or "dtype")) throw ctx.Error(k, $"unknown output field '{key}' (expected path, dtype)");
        }
        // Without a path the output is given on the command line (`-o`); planning says so if it is not.
        string? path = Find(map, "path") is { } pathNode ? OutputPath(ctx, pathNode) : null;
        var dtype = DType.F16;
        if (Find(map, "dtype") is { } dNode)
        {
            string name = ctx.Scalar(dNode, "dtype");
            if (!DTypes.TryParseUser(name, out dtype) || dtype is not (DType.F16 or DType.BF16 or DType.F32 or DType.F64))
                throw ctx.Error(dNode, $"unknown output dtype '{name}' (expected f16, bf16, f32 or f64)");
        }
        return new RecipeOutput(path, dtype, Line(node));
    }

    private static string OutputPath(Context ctx, YamlNode node)
    {
        string path = ctx.Path(node, "output path");
        if (SafetensorsFile.IsPickleExtension(path))
            throw ctx.Error(node, $"output '{path}' must be a .safetensors file; pickle checkpoints are never written");
        return path;
    }

    /// <summary>
    /// Walks the YAML events (YamlDotNet's parser keeps an explicit stack, unlike loading into nodes, which recurses)
    /// and refuses, with the line, what loading or reading the nodes could not survive or would silently ignore:
    /// nesting deeper than <see cref="MaxDepth"/>, a second document, anchors and aliases (which can make a node its own
    /// child), and a key given twice in one mapping.
    /// </summary>
    private static void CheckStructure(string text, string source, ref long lastLine)
    {
        var parser = new Parser(new StringReader(text));
        // Per open collection: null for a sequence, else the mapping's keys so far and whether a key comes next.
        var open = new Stack<(HashSet<string>? Keys, bool KeyNext)>();
        int documents = 0;
        while (parser.MoveNext())
        {
            var e = parser.Current!;
            long line = lastLine = e.Start.Line;
            switch (e)
            {
                case DocumentStart when ++documents > 1:
                    throw new MergeException($"{source}:{line}: a second YAML document; a recipe is one document");
                case AnchorAlias:
                    throw new MergeException($"{source}:{line}: YAML aliases (*name) are not allowed in a recipe; write the value out");
                case NodeEvent { Anchor.IsEmpty: false }:
                    throw new MergeException($"{source}:{line}: YAML anchors (&name) are not allowed in a recipe; write the value out");
            }
            if (e is Scalar or SequenceStart or MappingStart && open.TryPop(out var parent))
            {
                if (parent.Keys is not null && parent.KeyNext && e is Scalar key && !parent.Keys.Add(key.Value))
                    throw new MergeException($"{source}:{line}: '{key.Value}' is given twice in one mapping");
                open.Push((parent.Keys, parent.Keys is not null && !parent.KeyNext));
            }
            if (e is SequenceStart or MappingStart)
            {
                if (open.Count >= MaxDepth)
                    throw new MergeException($"{source}:{line}: the recipe nests deeper than {MaxDepth} levels");
                open.Push((e is MappingStart ? new HashSet<string>(StringComparer.Ordinal) : null, true));
            }
            else if (e is SequenceEnd or MappingEnd) open.Pop();
        }
    }

    internal static YamlNode? Find(YamlMappingNode map, string key)
    {
        foreach (var (k, v) in map.Children)
            if (k is YamlScalarNode s && s.Value == key) return v;
        return null;
    }

    private static int Line(YamlNode node) => (int)node.Start.Line;

    private static string OneLine(string s) => s.ReplaceLineEndings(" ");

    /// <summary>Turns nodes into values and errors into "file:line: message".</summary>
    private sealed class Context(string source)
    {
        public MergeException Error(YamlNode node, string message) => new($"{source}:{Line(node)}: {message}");

        public string Scalar(YamlNode node, string what) =>
            node is YamlScalarNode s ? s.Value ?? "" : throw Error(node, $"{what} must be a single value");

        /// <summary>A file path: not empty, and without a NUL, which no file name can hold.</summary>
        public string Path(YamlNode node, string what)
        {
            string path = Scalar(node, what);
            if (path.Length == 0) throw Error(node, $"{what} is empty");
            if (path.Contains('\0')) throw Error(node, $"{what} contains a NUL character");
            return path;
        }

        public double Double(YamlNode node, string what)
        {
            string s = Scalar(node, what);
            if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !double.IsFinite(v))
                throw Error(node, $"{what} '{s}' is not a finite number");
            return v;
        }

        public bool Bool(YamlNode node, string what) => Scalar(node, what).ToLowerInvariant() switch
        {
            "true" or "yes" => true,
            "false" or "no" => false,
            var s => throw Error(node, $"{what} '{s}' is not true or false"),
        };

        public int Int(YamlNode node, string what)
        {
            string s = Scalar(node, what);
            return int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : throw Error(node, $"{what} '{s}' is not an integer");
        }

        public ImmutableArray<string> Names(YamlNode node, string what) => node switch
        {
            YamlSequenceNode seq => seq.Children.Select(c => Scalar(c, what)).ToImmutableArray(),
            YamlScalarNode s => [s.Value ?? ""],
            _ => throw Error(node, $"{what} must be a list of model names"),
        };
    }
}
