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
    /// <summary>Headers already read, by file identity; a sweep plans many candidates over the same files and reads each header once.</summary>
    public Dictionary<FileIdentity, (SafetensorsHeader Header, long Length)>? Headers { get; init; }
}

/// <summary>Turns a recipe and the headers of its inputs into a <see cref="MergePlan"/>, checking everything before any heavy work.</summary>
public static class Planner
{
    public static MergePlan Create(Recipe recipe, PlanOptions? options = null)
    {
        options ??= new PlanOptions();
        if (options.OutputDType is { } dtype && dtype != recipe.Output.DType) recipe = recipe.WithOutputDType(dtype);
        string outputPath = options.OutputPath ?? ResolveOutput(recipe, options);
        if (SafetensorsFile.IsPickleExtension(outputPath))
            throw new MergeException($"{outputPath}: the output must be a .safetensors file; pickle checkpoints are never written");
        var inputs = OpenHeaders(recipe, options);
        RefuseOverwritingInput(recipe, inputs, outputPath);
        // SDXL's UNET has 9 input and output blocks, SD1's 12; per-block alphas follow the inputs' layout. Inputs that
        // share a file share its header object, so each header is looked at once.
        var seen = new HashSet<SafetensorsHeader>(ReferenceEqualityComparer.Instance);
        int blocksPerSide = inputs.Any(i => i.Length > 0 && seen.Add(i.Header) && ModelArchitecture.Detect(i.Header).Architecture == ModelArchitecture.Sdxl) ? 9 : 12;
        int baseIndex = recipe.Base is null ? -1 : recipe.ModelIndex(recipe.Base);
        var rules = new RuleInputs(recipe);

        // Every key some input contributes to its component's rule (or the base holds), in ordinal order.
        var keySet = new HashSet<string>(StringComparer.Ordinal);
        foreach (var input in inputs)
        {
            if (input.Length == 0) continue;
            foreach (var key in input.Header.Keys)
            {
                if (recipe.ModelConfig is { } config)
                {
                    // sd-mecha merges the keys of the model config (by their canonical names); others are dropped.
                    if (config.Canonical(key) is { } canonical) keySet.Add(canonical);
                    continue;
                }
                if (keySet.Contains(key)) continue;
                if (input.Index == baseIndex || rules.Uses(ModelArchitecture.Unknown.ComponentOf(key), input.Index)) keySet.Add(key);
            }
        }
        var candidateKeys = keySet.ToArray();
        keySet = null;
        Array.Sort(candidateKeys, StringComparer.Ordinal);

        // Each output tensor is placed (its byte range in the data section) as it is planned: the offsets do not
        // depend on the header, so the layout uses these very entries and nothing is built twice.
        var tensors = ImmutableArray.CreateBuilder<PlannedTensor>(candidateKeys.Length);
        var missing = new Dictionary<(string Model, Component Component, string Resolution), List<string>>();
        var trees = new TreePlanner(recipe, inputs, missing);
        var sources = new List<(int Position, MergeInput Input, TensorInfo Tensor)>();
        long offset = 0;
        foreach (string key in candidateKeys)
        {
            var planned = recipe.Tree is { } tree
                ? trees.Plan(tree, key, ModelArchitecture.Unknown.ComponentOf(key), tensors.Count, null, -1)
                : PlanTensor(recipe, rules, inputs, baseIndex, key, blocksPerSide, missing, (tensors.Count, offset), sources, trees);
            if (planned is null) continue;
            planned = PlacedAt(planned, offset);
            tensors.Add(planned);
            offset = planned.Output.End;
        }
        if (tensors.Count == 0)
            throw new MergeException($"{recipe.Source}: the recipe selects no tensors from its models");
        var placedTensors = tensors.DrainToImmutable();

        var metadata = BuildMetadata(recipe, inputs, baseIndex, options.InputHashes, options.OutputDType is not null);
        var layout = Layout(recipe, placedTensors, metadata);

        return new MergePlan
        {
            Recipe = recipe,
            Inputs = inputs,
            Tensors = placedTensors,
            Layout = layout,
            Shards = Split(placedTensors, options.ShardBytes),
            // models ≥ 1, so this cannot overflow for any group size (reduce.group: 2147483647 included).
            GroupCount = (recipe.Models.Length - 1) / recipe.ReduceGroup + 1,
            OutputPath = outputPath,
            Components = Summarise(recipe, placedTensors),
            Missing = missing.Select(kv => new MissingSummary(kv.Key.Model, kv.Key.Component, kv.Value.Count, kv.Key.Resolution, kv.Value.Take(3).ToImmutableArray()))
                .OrderBy(m => m.Model, StringComparer.Ordinal).ThenBy(m => m.Component).ToImmutableArray(),
            Metadata = metadata,
        };
    }

    /// <summary>
    /// The same plan with the input hashes recorded in its metadata: only the header and the offsets change, so nothing
    /// is read again (hashing comes after planning, which must fail fast on a broken header).
    /// </summary>
    public static MergePlan WithInputHashes(MergePlan plan, IReadOnlyDictionary<string, string> hashes, long shardBytes)
    {
        int baseIndex = plan.Recipe.Base is null ? -1 : plan.Recipe.ModelIndex(plan.Recipe.Base);
        var metadata = BuildMetadata(plan.Recipe, plan.Inputs, baseIndex, hashes, plan.Metadata.ContainsKey(MergeMetadata.OutputDType));
        var layout = Layout(plan.Recipe, plan.Tensors, metadata);
        var tensors = plan.Tensors;
        return new MergePlan
        {
            Recipe = plan.Recipe, Inputs = plan.Inputs, Tensors = tensors, Layout = layout, Shards = Split(tensors, shardBytes),
            GroupCount = plan.GroupCount, OutputPath = plan.OutputPath, Components = Summarise(plan.Recipe, tensors),
            Missing = plan.Missing, Metadata = metadata,
        };
    }

    /// <summary>The same plan cut into shards of at most <paramref name="shardBytes"/> input bytes (which never changes the output).</summary>
    public static MergePlan Reshard(MergePlan plan, long shardBytes) => new()
    {
        Recipe = plan.Recipe, Inputs = plan.Inputs, Tensors = plan.Tensors, Layout = plan.Layout, Shards = Split(plan.Tensors, shardBytes),
        GroupCount = plan.GroupCount, OutputPath = plan.OutputPath, Components = plan.Components, Missing = plan.Missing, Metadata = plan.Metadata,
    };

    /// <summary>The output's layout, refused here rather than after the merge when its header is over the limit every reader enforces.</summary>
    private static SafetensorsLayout Layout(Recipe recipe, ImmutableArray<PlannedTensor> tensors, ImmutableSortedDictionary<string, string> metadata)
    {
        var outputs = new TensorInfo[tensors.Length];
        for (int i = 0; i < outputs.Length; i++) outputs[i] = tensors[i].Output;
        var layout = SafetensorsLayout.FromTensors(outputs, metadata);
        long header = layout.DataStart - 8;
        if (header > SafetensorsHeader.MaxHeaderBytes)
        {
            long meta = metadata.Sum(kv => (long)kv.Key.Length + kv.Value.Length);
            throw new MergeException($"{recipe.Source}: the output's header would be {header:N0} bytes, over the {SafetensorsHeader.MaxHeaderBytes:N0}-byte limit of safetensors readers ({tensors.Length:N0} tensors, {meta:N0} characters of metadata)");
        }
        return layout;
    }

    /// <summary>
    /// An output that is an input under another name (a symlink or hard link to it, or the same path) would replace
    /// it: refused by file identity (device, inode), not by comparing path strings.
    /// </summary>
    private static void RefuseOverwritingInput(Recipe recipe, ImmutableArray<MergeInput> inputs, string outputPath)
    {
        if (RegularFile.IdentityOf(outputPath) is not { } output) return;
        foreach (var input in inputs)
        {
            var identity = input.Length > 0 ? input.Identity : RegularFile.IdentityOf(input.Path);
            if (identity == output)
                throw new MergeException($"{outputPath}: the output is the same file as model '{input.Name}' ({input.Path}); writing it would replace that input");
        }
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

        // A file named by many models (one checkpoint listed 1,000 times) is parsed once: memory follows the headers, not the names.
        var known = options.Headers ?? new Dictionary<FileIdentity, (SafetensorsHeader Header, long Length)>();
        var inputs = ImmutableArray.CreateBuilder<MergeInput>(recipe.Models.Length);
        for (int i = 0; i < recipe.Models.Length; i++)
        {
            var model = recipe.Models[i];
            string path = options.ResolvePath is null ? recipe.ModelPath(i) : options.ResolvePath(model.Path);
            if (!used.Contains(model.Name))
            {
                inputs.Add(new MergeInput(i, model.Name, path, EmptyHeader, 0, default));
                continue;
            }
            SafetensorsHeader header;
            long length;
            FileIdentity identity;
            try
            {
                using var handle = SafetensorsFile.OpenChecked(path);
                identity = RegularFile.Identity(handle);
                if (known.TryGetValue(identity, out var seen))
                    (header, length) = seen;
                else
                {
                    header = SafetensorsFile.ReadHeader(handle, path, out length);
                    known[identity] = (header, length);
                }
            }
            catch (SafetensorsException e) when (e.Error == SafetensorsError.NotFound)
            {
                throw new MergeException($"{recipe.Source}:{model.Line}: model '{model.Name}': {path}: file not found", e);
            }
            inputs.Add(new MergeInput(i, model.Name, path, header, length, identity));
        }
        return inputs.MoveToImmutable();
    }

    private static readonly SafetensorsHeader EmptyHeader = SafetensorsHeader.Parse("{}"u8, 0, "(unused)");

    private static string ResolveOutput(Recipe recipe, PlanOptions options) =>
        options.ResolvePath is null ? recipe.OutputPath : options.ResolvePath(recipe.OutputPathAsWritten);

    private static PlannedTensor? PlanTensor(Recipe recipe, RuleInputs rules, ImmutableArray<MergeInput> inputs, int baseIndex, string key, int blocksPerSide,
        Dictionary<(string, Component, string), List<string>> missing, (int Index, long Begin) at, List<(int Position, MergeInput Input, TensorInfo Tensor)> sources,
        TreePlanner trees)
    {
        var component = ModelArchitecture.Unknown.ComponentOf(key);
        var rule = recipe.RuleFor(component);
        bool baseHas = baseIndex >= 0 && inputs[baseIndex].Header.Contains(key);

        if (rule is null)
        {
            if (baseIndex < 0)
                throw new MergeException($"{recipe.Source}: component {component.Name()} (e.g. '{key}') has no rule and there is no base to copy it from");
            return baseHas ? CopyOf(recipe, inputs[baseIndex], key, component, at, null) : null;
        }

        var policy = rule.Missing ?? recipe.Missing;
        // The non-linear methods are planned from their tree; the linear ones below build exactly the terms they always did.
        if (RecipeTrees.IsNonLinear(rule.Method))
            return trees.Plan(RecipeTrees.For(rule), key, component, at.Index, policy, baseIndex);
        var slots = rules.Slots(rule);
        sources.Clear();
        for (int p = 0; p < rule.Models.Length; p++)
        {
            var input = inputs[slots[p]];
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
            return baseHas ? CopyOf(recipe, inputs[baseIndex], key, component, at, recipe.Base) : null;

        CheckShapes(key, sources);
        var first = sources[0].Tensor;
        if (!first.DType.IsFloat() || sources.Any(s => !s.Tensor.DType.IsFloat()))
        {
            // Integer tensors (position_ids) are indices, not weights: never averaged. A float tensor among them is
            // no index, and copying one source while the plan says "mean" would be a silent lie.
            var isFloat = sources.Find(s => s.Tensor.DType.IsFloat());
            var isInteger = sources.Find(s => !s.Tensor.DType.IsFloat());
            if (isFloat.Input is not null && rule.Method != MergeMethod.Copy)
                throw new MergeException($"{isInteger.Input.Path}: tensor '{key}': {isInteger.Tensor.DType.Name()} in model '{isInteger.Input.Name}' but {isFloat.Tensor.DType.Name()} in model '{isFloat.Input.Name}'; an integer tensor cannot be merged with a float one");
            var owner = baseHas ? inputs[baseIndex] : sources[0].Input;
            return CopyOf(recipe, owner, key, component, at, null);
        }

        if (rule.Method == MergeMethod.Copy)
        {
            bool stoodIn = sources[0].Input.Name != rule.Models[0];
            return CopyOf(recipe, sources[0].Input, key, component, at, stoodIn ? recipe.Base : null);
        }

        var terms = ImmutableArray.CreateBuilder<TermSource>(sources.Count);
        double divisor = 1.0;
        switch (rule.Method)
        {
            case MergeMethod.Mean:
                {
                    // Weights are used relative to the largest, so 1e308 or 5e-324 each give the plain mean (equal
                    // weights become exactly 1) instead of an overflowing or underflowing sum.
                    double largest = 1.0;
                    if (!rule.Weights.IsEmpty)
                    {
                        largest = 0;
                        foreach (double w in rule.Weights) largest = Math.Max(largest, w);
                    }
                    divisor = 0;
                    foreach (var s in sources)
                    {
                        double w = rule.Weights.IsEmpty ? 1.0 : rule.Weights[s.Position] / largest;
                        if (w == 0) continue;
                        terms.Add(Term(recipe, slots, s.Position, s.Input, s.Tensor, w));
                        divisor += w;
                    }
                    break;
                }
            case MergeMethod.WeightedSum:
                {
                    double alpha = UnetBlocks.AlphaFor(key, blocksPerSide, rule.Alpha, rule.BlockAlphas);
                    if (sources.Count == 1)
                        terms.Add(Term(recipe, slots, sources[0].Position, sources[0].Input, sources[0].Tensor, 1.0));
                    else
                    {
                        AddUnlessZero(terms, Term(recipe, slots, 0, sources[0].Input, sources[0].Tensor, 1.0 - alpha));
                        AddUnlessZero(terms, Term(recipe, slots, 1, sources[1].Input, sources[1].Tensor, alpha));
                    }
                    break;
                }
            case MergeMethod.AddDifference:
                {
                    if (sources[0].Position != 0)
                        throw new MergeException($"{recipe.Source}:{rule.Line}: tensor '{key}': add_difference has no '{rule.Models[0]}' to add the difference to");
                    terms.Add(Term(recipe, slots, 0, sources[0].Input, sources[0].Tensor, 1.0));
                    if (sources.Count == 3)
                    {
                        AddUnlessZero(terms, Term(recipe, slots, 1, sources[1].Input, sources[1].Tensor, rule.Alpha));
                        AddUnlessZero(terms, Term(recipe, slots, 2, sources[2].Input, sources[2].Tensor, -rule.Alpha));
                    }
                    break;
                }
        }
        if (terms.Count == 0 || divisor == 0)
            return CopyOf(recipe, sources[0].Input, key, component, at, null);

        var output = Placed(key, recipe.Output.DType, first.Shape, at.Begin);
        return new PlannedTensor(at.Index, output, component, TensorOp.Combine, terms.DrainToImmutable(), divisor, null);
    }

    private static TermSource Term(Recipe recipe, int[] slots, int position, MergeInput input, TensorInfo tensor, double coefficient)
    {
        // The leaf of the reduction tree comes from the model's place in `models:`, even when the base stands in for it.
        return new TermSource(input.Index, tensor, coefficient, slots[position] / recipe.ReduceGroup);
    }

    /// <summary>
    /// A term whose coefficient is exactly zero is not read at all: 0·x is not 0 when x is NaN or infinite, and
    /// `weighted_sum` with alpha 1 must be its second model bit for bit whatever the first holds.
    /// </summary>
    private static void AddUnlessZero(ImmutableArray<TermSource>.Builder terms, TermSource term)
    {
        if (term.Coefficient != 0) terms.Add(term);
    }

    /// <summary>Per rule, the models' indices in `models:` and which inputs it reads: lookups per key must not scan the model list.</summary>
    private sealed class RuleInputs
    {
        private readonly Dictionary<ComponentRule, (int[] Slots, bool[] Reads)> _byRule = new(ReferenceEqualityComparer.Instance);
        private readonly ComponentRule?[] _byComponent;

        public RuleInputs(Recipe recipe)
        {
            _byComponent = new ComponentRule?[Components.All.Count];
            foreach (var component in Components.All) _byComponent[(int)component] = recipe.RuleFor(component);
            foreach (var rule in recipe.Components.Values)
            {
                var slots = new int[rule.Models.Length];
                var reads = new bool[recipe.Models.Length];
                for (int p = 0; p < slots.Length; p++) reads[slots[p] = recipe.ModelIndex(rule.Models[p])] = true;
                if (rule.DeltaBase is not null && recipe.ModelIndex(rule.DeltaBase) is >= 0 and var deltaBase) reads[deltaBase] = true;
                _byRule[rule] = (slots, reads);
            }
        }

        public int[] Slots(ComponentRule rule) => _byRule[rule].Slots;

        /// <summary>Whether the rule of <paramref name="component"/> reads input <paramref name="index"/>.</summary>
        public bool Uses(Component component, int index) => _byComponent[(int)component] is { } rule && _byRule[rule].Reads[index];
    }

    private static PlannedTensor CopyOf(Recipe recipe, MergeInput input, string key, Component component, (int Index, long Begin) at, string? filledFrom)
    {
        var t = input.Header.TryGet(key, out var info) ? info : throw new InvalidOperationException(key);
        var dtype = t.DType.IsFloat() ? recipe.Output.DType : t.DType;
        return new PlannedTensor(at.Index, Placed(key, dtype, t.Shape, at.Begin), component, TensorOp.Copy, [new TermSource(input.Index, t, 1.0, 0)], 1.0, filledFrom);
    }

    /// <summary>The tensor with its output at <paramref name="begin"/>: as planned here already, or moved there (a method tree's tensors come unplaced).</summary>
    private static PlannedTensor PlacedAt(PlannedTensor tensor, long begin)
    {
        var o = tensor.Output;
        long elements = TensorInfo.CountElements(o.Shape.AsSpan()) ?? -1;
        return o.Begin == begin && o.ByteLength == elements * o.DType.Size() ? tensor : tensor with { Output = Placed(o.Key, o.DType, o.Shape, begin) };
    }

    /// <summary>An output tensor's entry, its bytes starting at <paramref name="begin"/> of the data section.</summary>
    private static TensorInfo Placed(string key, DType dtype, ImmutableArray<long> shape, long begin)
    {
        long elements = TensorInfo.CountElements(shape.AsSpan()) ?? throw new MergeException($"tensor '{key}': its shape overflows");
        try { return new TensorInfo(key, dtype, shape, begin, checked(begin + elements * dtype.Size())); }
        catch (OverflowException) { throw new MergeException($"tensor '{key}': the output would pass 2^63 bytes"); }
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
        // The recipe as written: its paths stay relative to it, and the maker's directories are not recorded.
        meta[MergeMetadata.Recipe] = recipe.Text;
        meta[MergeMetadata.Tool] = MergeMetadata.ToolName;
        if (dtypeOverridden) meta[MergeMetadata.OutputDType] = recipe.Output.DType.Name();
        if (hashes is not null)
            meta[MergeMetadata.Inputs] = MergeMetadata.FormatInputs(hashes);
        return meta.ToImmutable();
    }
}
