using System.Collections.Immutable;
using MergeCluster.Merge;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Methods;
using MergeCluster.Merge.Numerics;
using MergeCluster.Merge.Recipes;
using MergeCluster.Safetensors;

namespace MergeCluster.Planning;

/// <summary>Knobs of planning that do not change the output's bits.</summary>
public sealed record PlanOptions
{
    /// <summary>Target input bytes per shard; shards never split a tensor.</summary>
    public long ShardBytes { get; init; } = 256L << 20;
    /// <summary>Input hashes (AutoV2 by model name) recorded in the output metadata; null leaves them out (dry runs).</summary>
    public IReadOnlyDictionary<string, string>? InputHashes { get; init; }
    /// <summary>Overrides the recipe's output path (absolute).</summary>
    public string? OutputPath { get; init; }
    /// <summary>Maps a recipe path to the path to open; the cluster confines it to the silo's data roots.</summary>
    public Func<string, string>? ResolvePath { get; init; }
    /// <summary>Overrides the recipe's output dtype (recorded in the metadata, so a replay rounds the same way).</summary>
    public DType? OutputDType { get; init; }
    /// <summary>Reads an input's header (and the file's length); a sweep plans many candidates over the same files and reads each header once.</summary>
    public Func<string, (SafetensorsHeader Header, long Length)>? ReadHeader { get; init; }
}

/// <summary>Turns a recipe and the headers of its inputs into a <see cref="MergePlan"/>, checking everything before any heavy work.</summary>
public static class Planner
{
    public static MergePlan Create(Recipe recipe, PlanOptions? options = null)
    {
        options ??= new PlanOptions();
        if (options.OutputDType is { } dtype && dtype != recipe.Output.DType) recipe = recipe.WithOutputDType(dtype);
        var inputs = OpenHeaders(recipe, options);
        // SDXL's UNET has 9 input and output blocks, SD1's 12; per-block alphas follow the inputs' layout.
        int blocksPerSide = inputs.Any(i => i.Length > 0 && ModelArchitecture.Detect(i.Header).Architecture == ModelArchitecture.Sdxl) ? 9 : 12;
        int baseIndex = recipe.Base is null ? -1 : recipe.ModelIndex(recipe.Base);

        var candidateKeys = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var input in inputs)
        {
            foreach (var key in input.Header.Keys)
            {
                if (recipe.ModelConfig is { } config)
                {
                    // sd-mecha merges the keys of the model config (by their canonical names); others are dropped.
                    if (config.Canonical(key) is { } canonical) candidateKeys.Add(canonical);
                    continue;
                }
                var component = ModelArchitecture.Unknown.ComponentOf(key);
                var rule = recipe.RuleFor(component);
                bool used = input.Index == baseIndex || (rule is not null && (rule.Models.Contains(input.Name) || rule.DeltaBase == input.Name));
                if (used) candidateKeys.Add(key);
            }
        }

        var tensors = new List<PlannedTensor>(candidateKeys.Count);
        var specs = new List<TensorSpec>(candidateKeys.Count);
        var missing = new Dictionary<(string Model, Component Component, string Resolution), List<string>>();
        var trees = new TreePlanner(recipe, inputs, missing);
        foreach (string key in candidateKeys)
        {
            var planned = recipe.Tree is { } tree
                ? trees.Plan(tree, key, ModelArchitecture.Unknown.ComponentOf(key), tensors.Count, null, -1)
                : PlanTensor(recipe, inputs, baseIndex, key, blocksPerSide, missing, tensors.Count, trees);
            if (planned is null) continue;
            tensors.Add(planned);
            specs.Add(new TensorSpec(key, planned.Output.DType, planned.Output.Shape));
        }
        if (tensors.Count == 0)
            throw new MergeException($"{recipe.Source}: the recipe selects no tensors from its models");

        var metadata = BuildMetadata(recipe, inputs, baseIndex, options.InputHashes, options.OutputDType is not null);
        var layout = SafetensorsLayout.Create(specs, metadata);
        var placed = tensors.Select(t => t with { Output = layout.Tensors[t.Index] }).ToImmutableArray();

        return new MergePlan
        {
            Recipe = recipe,
            Inputs = inputs,
            Tensors = placed,
            Layout = layout,
            Shards = Split(placed, options.ShardBytes),
            GroupCount = (recipe.Models.Length + recipe.ReduceGroup - 1) / recipe.ReduceGroup,
            OutputPath = options.OutputPath ?? ResolveOutput(recipe, options),
            Components = Summarise(recipe, placed),
            Missing = missing.Select(kv => new MissingSummary(kv.Key.Model, kv.Key.Component, kv.Value.Count, kv.Key.Resolution, kv.Value.Take(3).ToImmutableArray()))
                .OrderBy(m => m.Model, StringComparer.Ordinal).ThenBy(m => m.Component).ToImmutableArray(),
            Metadata = metadata,
        };
    }

    /// <summary>Reads and validates every input header first, so a broken model 37 is reported in the first second.</summary>
    private static ImmutableArray<MergeInput> OpenHeaders(Recipe recipe, PlanOptions options)
    {
        var used = new HashSet<string>(StringComparer.Ordinal);
        if (recipe.Base is not null) used.Add(recipe.Base);
        foreach (var component in Components.All)
            if (recipe.RuleFor(component) is { } rule)
            {
                used.UnionWith(rule.Models);
                if (rule.DeltaBase is not null) used.Add(rule.DeltaBase);
            }
        if (recipe.Tree is not null) used.UnionWith(recipe.Models.Select(m => m.Name));

        var inputs = ImmutableArray.CreateBuilder<MergeInput>(recipe.Models.Length);
        for (int i = 0; i < recipe.Models.Length; i++)
        {
            var model = recipe.Models[i];
            string path = options.ResolvePath is null ? recipe.ModelPath(i) : options.ResolvePath(model.Path);
            if (!used.Contains(model.Name))
            {
                inputs.Add(new MergeInput(i, model.Name, path, EmptyHeader, 0));
                continue;
            }
            if (!File.Exists(path))
                throw new MergeException($"{recipe.Source}:{model.Line}: model '{model.Name}': {path}: file not found");
            var (header, length) = options.ReadHeader is { } read ? read(path) : (SafetensorsFile.ReadHeader(path, out long l), l);
            inputs.Add(new MergeInput(i, model.Name, path, header, length));
        }
        return inputs.MoveToImmutable();
    }

    private static readonly SafetensorsHeader EmptyHeader = SafetensorsHeader.Parse("{}"u8, 0, "(unused)");

    private static string ResolveOutput(Recipe recipe, PlanOptions options)
    {
        if (recipe.Output.Path.Length == 0)
            throw new MergeException($"{recipe.Source}: the recipe names no output file (a .mecha recipe never does): give -o OUT");
        return options.ResolvePath is null ? recipe.OutputPath : options.ResolvePath(recipe.Output.Path);
    }

    private static PlannedTensor? PlanTensor(Recipe recipe, ImmutableArray<MergeInput> inputs, int baseIndex, string key, int blocksPerSide,
        Dictionary<(string, Component, string), List<string>> missing, int index, TreePlanner trees)
    {
        var component = ModelArchitecture.Unknown.ComponentOf(key);
        var rule = recipe.RuleFor(component);
        bool baseHas = baseIndex >= 0 && inputs[baseIndex].Header.Contains(key);

        if (rule is null)
        {
            if (baseIndex < 0)
                throw new MergeException($"{recipe.Source}: component {component.Name()} (e.g. '{key}') has no rule and there is no base to copy it from");
            return baseHas ? CopyOf(recipe, inputs[baseIndex], key, component, index, null) : null;
        }

        var policy = rule.Missing ?? recipe.Missing;
        // The non-linear methods are planned from their tree; the linear ones below build exactly the terms they always did.
        if (RecipeTrees.IsNonLinear(rule.Method))
            return trees.Plan(RecipeTrees.For(rule), key, component, index, policy, baseIndex);
        var sources = new List<(int Position, MergeInput Input, TensorInfo Tensor)>(rule.Models.Length);
        for (int p = 0; p < rule.Models.Length; p++)
        {
            var input = inputs[recipe.ModelIndex(rule.Models[p])];
            if (input.Header.TryGet(key, out var t))
            {
                sources.Add((p, input, t));
                continue;
            }
            switch (policy)
            {
                case MissingPolicy.Error:
                    throw new MergeException($"{input.Path}: tensor '{key}': missing from model '{input.Name}' (a pruned checkpoint?); set `missing: base` with a base, or `missing: skip`");
                case MissingPolicy.Base when baseHas:
                    sources.Add((p, inputs[baseIndex], inputs[baseIndex].Header.TryGet(key, out var b) ? b : throw new InvalidOperationException()));
                    Note(missing, input.Name, component, $"filled from base '{recipe.Base}'", key);
                    break;
                default:
                    Note(missing, input.Name, component, "skipped", key);
                    break;
            }
        }

        if (sources.Count == 0)
            return baseHas ? CopyOf(recipe, inputs[baseIndex], key, component, index, recipe.Base) : null;

        CheckShapes(key, sources);
        var first = sources[0].Tensor;
        if (!first.DType.IsFloat() || sources.Any(s => !s.Tensor.DType.IsFloat()))
        {
            // Integer tensors (position_ids) are indices, not weights: never averaged.
            var owner = baseHas ? inputs[baseIndex] : sources[0].Input;
            return CopyOf(recipe, owner, key, component, index, null);
        }

        if (rule.Method == MergeMethod.Copy)
        {
            bool stoodIn = sources[0].Input.Name != rule.Models[0];
            return CopyOf(recipe, sources[0].Input, key, component, index, stoodIn ? recipe.Base : null);
        }

        var terms = ImmutableArray.CreateBuilder<TermSource>(sources.Count);
        double divisor = 1.0;
        switch (rule.Method)
        {
            case MergeMethod.Mean:
                divisor = 0;
                foreach (var s in sources)
                {
                    double w = rule.Weights.IsEmpty ? 1.0 : rule.Weights[s.Position];
                    if (w == 0) continue;
                    terms.Add(Term(recipe, rule, s.Position, s.Input, s.Tensor, w));
                    divisor += w;
                }
                break;
            case MergeMethod.WeightedSum:
                {
                    double alpha = UnetBlocks.AlphaFor(key, blocksPerSide, rule.Alpha, rule.BlockAlphas);
                    if (sources.Count == 1)
                        terms.Add(Term(recipe, rule, sources[0].Position, sources[0].Input, sources[0].Tensor, 1.0));
                    else
                    {
                        terms.Add(Term(recipe, rule, 0, sources[0].Input, sources[0].Tensor, 1.0 - alpha));
                        terms.Add(Term(recipe, rule, 1, sources[1].Input, sources[1].Tensor, alpha));
                    }
                    break;
                }
            case MergeMethod.AddDifference:
                {
                    if (sources[0].Position != 0)
                        throw new MergeException($"{recipe.Source}:{rule.Line}: tensor '{key}': add_difference has no '{rule.Models[0]}' to add the difference to");
                    terms.Add(Term(recipe, rule, 0, sources[0].Input, sources[0].Tensor, 1.0));
                    if (sources.Count == 3)
                    {
                        terms.Add(Term(recipe, rule, 1, sources[1].Input, sources[1].Tensor, rule.Alpha));
                        terms.Add(Term(recipe, rule, 2, sources[2].Input, sources[2].Tensor, -rule.Alpha));
                    }
                    break;
                }
        }
        if (terms.Count == 0 || divisor == 0)
            return CopyOf(recipe, sources[0].Input, key, component, index, null);

        var output = new TensorInfo(key, recipe.Output.DType, first.Shape, 0, 0);
        return new PlannedTensor(index, output, component, TensorOp.Combine, terms.ToImmutable(), divisor, null);
    }

    private static TermSource Term(Recipe recipe, ComponentRule rule, int position, MergeInput input, TensorInfo tensor, double coefficient)
    {
        // The leaf of the reduction tree comes from the model's place in `models:`, even when the base stands in for it.
        int slot = recipe.ModelIndex(rule.Models[position]);
        return new TermSource(input.Index, tensor, coefficient, slot / recipe.ReduceGroup);
    }

    private static PlannedTensor CopyOf(Recipe recipe, MergeInput input, string key, Component component, int index, string? filledFrom)
    {
        var t = input.Header.TryGet(key, out var info) ? info : throw new InvalidOperationException(key);
        var dtype = t.DType.IsFloat() ? recipe.Output.DType : t.DType;
        var output = new TensorInfo(key, dtype, t.Shape, 0, 0);
        return new PlannedTensor(index, output, component, TensorOp.Copy, [new TermSource(input.Index, t, 1.0, 0)], 1.0, filledFrom);
    }

    private static void CheckShapes(string key, List<(int Position, MergeInput Input, TensorInfo Tensor)> sources)
    {
        var shape = sources[0].Tensor.Shape;
        foreach (var s in sources)
        {
            if (!s.Tensor.Shape.SequenceEqual(shape))
                throw new MergeException($"{s.Input.Path}: tensor '{key}': shape {s.Tensor.ShapeText} in model '{s.Input.Name}' differs from {sources[0].Tensor.ShapeText} in model '{sources[0].Input.Name}' (an inpainting or other variant cannot be merged with it)");
        }
    }

    private static void Note(Dictionary<(string, Component, string), List<string>> missing, string model, Component component, string resolution, string key)
    {
        if (!missing.TryGetValue((model, component, resolution), out var list)) missing[(model, component, resolution)] = list = [];
        list.Add(key);
    }

    private static ImmutableArray<Shard> Split(ImmutableArray<PlannedTensor> tensors, long shardBytes)
    {
        var shards = ImmutableArray.CreateBuilder<Shard>();
        int first = 0;
        long input = 0, output = 0;
        for (int i = 0; i < tensors.Length; i++)
        {
            input += tensors[i].InputBytes;
            output += tensors[i].Output.ByteLength;
            if (input >= shardBytes || i == tensors.Length - 1)
            {
                shards.Add(new Shard(shards.Count, first, i - first + 1, output, input));
                first = i + 1;
                input = output = 0;
            }
        }
        return shards.ToImmutable();
    }

    private static ImmutableArray<ComponentPlan> Summarise(Recipe recipe, ImmutableArray<PlannedTensor> tensors)
    {
        var result = ImmutableArray.CreateBuilder<ComponentPlan>();
        foreach (var group in tensors.GroupBy(t => t.Component).OrderBy(g => g.Key))
        {
            if (recipe.Tree is { } tree)
            {
                var used = group.SelectMany(t => t.Terms).Select(t => recipe.Models[t.Input].Name).Distinct().Order(StringComparer.Ordinal).ToImmutableArray();
                // What the component's tensors came to: the methods of their programs, a linear combination, or a copy.
                var methods = group.SelectMany(t => t.Op switch
                {
                    TensorOp.Method => t.Program!.Nodes.Where(n => n.Op == ProgramOp.Method).Select(n => n.Method!.Name),
                    TensorOp.Combine => ["linear"],
                    _ => (IEnumerable<string>)["copy"],
                }).Distinct().Order(StringComparer.Ordinal);
                result.Add(new ComponentPlan(group.Key, ".mecha: " + string.Join(", ", methods), used, group.Count(), group.Sum(t => t.Output.ByteLength), group.Sum(t => t.InputBytes)));
                continue;
            }
            var rule = recipe.RuleFor(group.Key);
            string method = rule is null ? "copy" : rule.Method switch
            {
                MergeMethod.Mean => rule.Weights.IsEmpty ? "mean" : "weighted mean",
                MergeMethod.WeightedSum => rule.BlockAlphas.Count > 0 ? $"weighted_sum alpha={rule.Alpha} (+{rule.BlockAlphas.Count} block alphas)" : $"weighted_sum alpha={rule.Alpha}",
                MergeMethod.AddDifference => $"add_difference alpha={rule.Alpha}",
                MergeMethod.Copy => "copy",
                _ => Describe(rule),
            };
            var models = rule?.Models ?? [recipe.Base!];
            result.Add(new ComponentPlan(group.Key, method, models, group.Count(), group.Sum(t => t.Output.ByteLength), group.Sum(t => t.InputBytes)));
        }
        return result.ToImmutable();
    }

    /// <summary>A non-linear rule for the plan: its method, alpha, options and base, e.g. `ties alpha=1 k=0.2 (base: sdxl)`.</summary>
    private static string Describe(ComponentRule rule)
    {
        var parts = new List<string> { rule.Method switch
        {
            MergeMethod.GeometricMedian => "geometric_median",
            MergeMethod.ModelStock => "model_stock",
            var m => m.ToString().ToLowerInvariant(),
        } };
        if (RecipeTrees.DefaultAlpha(rule.Method) is not null) parts.Add($"alpha={rule.Alpha}");
        foreach (var (k, v) in rule.Options) parts.Add($"{k}={MethodArguments.Format(v)}");
        if (rule.DeltaBase is not null) parts.Add($"(base: {rule.DeltaBase})");
        return string.Join(" ", parts);
    }

    private static ImmutableSortedDictionary<string, string> BuildMetadata(Recipe recipe, ImmutableArray<MergeInput> inputs, int baseIndex, IReadOnlyDictionary<string, string>? hashes, bool dtypeOverridden)
    {
        var meta = ImmutableSortedDictionary.CreateBuilder<string, string>(StringComparer.Ordinal);
        if (baseIndex >= 0)
            foreach (var (k, v) in inputs[baseIndex].Header.Metadata)
                if (k.StartsWith("modelspec.", StringComparison.Ordinal)) meta[k] = v;
        meta["format"] = "pt";
        meta[MergeMetadata.Recipe] = recipe.Text;
        meta[MergeMetadata.RecipeDirectory] = recipe.Directory;
        meta[MergeMetadata.Tool] = MergeMetadata.ToolName;
        if (dtypeOverridden) meta[MergeMetadata.OutputDType] = recipe.Output.DType.Name();
        if (hashes is not null)
            meta[MergeMetadata.Inputs] = MergeMetadata.FormatInputs(hashes);
        return meta.ToImmutable();
    }
}
