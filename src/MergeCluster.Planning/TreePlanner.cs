using System.Collections.Immutable;
using MergeCluster.Merge;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Methods;
using MergeCluster.Merge.Recipes;
using MergeCluster.Safetensors;

namespace MergeCluster.Planning;

/// <summary>
/// Plans one tensor from a recipe tree: resolves which inputs have the key (pick_component, omit_component and
/// fallback choose by key; a missing model stands in the base, is skipped or fails, as the YAML rule says; in .mecha it
/// makes its node lack the key, as in sd-mecha), composes linear nodes into coefficients, and emits either the exact
/// summation (<see cref="TensorOp.Combine"/>: a tree of only linear nodes runs exactly as a YAML mean does) or a
/// <see cref="TensorProgram"/> for the evaluator.
/// </summary>
internal sealed class TreePlanner(Recipe recipe, ImmutableArray<MergeInput> inputs, Dictionary<(string, Component, string), List<string>> missing)
{
    /// <summary>A linear combination of program nodes over a divisor, or null for a key the subtree lacks.</summary>
    private sealed record Form(ImmutableArray<(int Node, double Coefficient)> Terms, double Divisor);

    private sealed record Leaf(MergeInput Input, TensorInfo Tensor, int Slot, string Model);

    private readonly List<Leaf> _leaves = [];
    private readonly List<ProgramNode> _nodes = [];
    private readonly Dictionary<RecipeNode, Form?> _memo = new(ReferenceEqualityComparer.Instance);
    private string _key = "";
    private Component _component;
    private MissingPolicy? _policy;
    private int _baseIndex = -1;

    /// <param name="policy">The YAML rule's missing policy; null for .mecha (a missing key is absent).</param>
    /// <param name="standIn">The input that stands in for a model lacking the key under <see cref="MissingPolicy.Base"/>.</param>
    public PlannedTensor? Plan(RecipeNode tree, string key, Component component, int index, MissingPolicy? policy, int standIn)
    {
        _leaves.Clear();
        _nodes.Clear();
        _memo.Clear();
        (_key, _component, _policy, _baseIndex) = (key, component, policy, standIn);

        var form = Resolve(tree);
        if (form is null)
        {
            if (policy is not null && standIn >= 0 && Find(inputs[standIn]) is { } b)
                return CopyOf(inputs[standIn], b, index, recipe.Base);
            return null;
        }
        var first = _leaves[0];
        foreach (var leaf in _leaves)
            if (!leaf.Tensor.Shape.SequenceEqual(first.Tensor.Shape))
                throw new MergeException($"{leaf.Input.Path}: tensor '{key}': shape {leaf.Tensor.ShapeText} in model '{leaf.Model}' differs from {first.Tensor.ShapeText} in model '{first.Model}' (an inpainting or other variant cannot be merged with it)");
        if (_leaves.Any(l => !l.Tensor.DType.IsFloat()))
        {
            // Integer tensors (position_ids) are indices, not weights: never averaged.
            var owner = policy is not null && standIn >= 0 && Find(inputs[standIn]) is { } bt ? (inputs[standIn], bt) : (first.Input, first.Tensor);
            return CopyOf(owner.Item1, owner.Item2, index, null);
        }

        var output = new TensorInfo(key, recipe.Output.DType, first.Tensor.Shape, 0, 0);
        if (_nodes.All(n => n.Op == ProgramOp.Leaf))
        {
            // Only linear nodes: the exact summation path, with the leaves' reduction groups.
            if (form.Terms.Length == 1 && form.Terms[0].Coefficient == 1.0 && form.Divisor == 1.0)
            {
                var only = _leaves[_nodes[form.Terms[0].Node].Leaf];
                return CopyOf(only.Input, only.Tensor, index, null);
            }
            var terms = form.Terms.Select(t =>
            {
                var leaf = _leaves[_nodes[t.Node].Leaf];
                return new TermSource(leaf.Input.Index, leaf.Tensor, t.Coefficient, leaf.Slot / recipe.ReduceGroup);
            }).ToImmutableArray();
            return new PlannedTensor(index, output, component, TensorOp.Combine, terms, form.Divisor, null);
        }
        if (Materialize(form) != _nodes.Count - 1)
            _nodes.Add(new ProgramNode(ProgramOp.Linear, -1, [Materialize(form)], [1.0], 1.0, null, null)); // the root is the last node
        var sources = _leaves.Select(l => new TermSource(l.Input.Index, l.Tensor, 1.0, -1)).ToImmutableArray();
        return new PlannedTensor(index, output, component, TensorOp.Method, sources, 1.0, null, new TensorProgram([.. _nodes]));
    }

    private Form? Resolve(RecipeNode node)
    {
        if (_memo.TryGetValue(node, out var known)) return known;
        var form = node switch
        {
            ModelNode m => ResolveModel(m),
            MergeNode m => ResolveMerge(m),
            _ => throw new InvalidOperationException(node.GetType().Name),
        };
        _memo[node] = form;
        return form;
    }

    private Form? ResolveModel(ModelNode node)
    {
        int slot = recipe.ModelIndex(node.Model);
        var input = inputs[slot];
        if (Find(input) is { } tensor) return LeafForm(input, tensor, slot, node.Model);
        switch (_policy)
        {
            case null:
                return null;
            case MissingPolicy.Error:
                throw new MergeException($"{input.Path}: tensor '{_key}': missing from model '{input.Name}' (a pruned checkpoint?); set `missing: base` with a base, or `missing: skip`");
            case MissingPolicy.Base when _baseIndex >= 0 && _baseIndex != slot && Find(inputs[_baseIndex]) is { } b:
                Note(input.Name, $"filled from base '{recipe.Base}'");
                // The leaf keeps the model's slot: the reduction tree's shape comes from `models:`, not from the stand-in.
                return LeafForm(inputs[_baseIndex], b, slot, input.Name);
            default:
                Note(input.Name, "skipped");
                return null;
        }
    }

    private Form LeafForm(MergeInput input, TensorInfo tensor, int slot, string model)
    {
        int leaf = _leaves.FindIndex(l => l.Input.Index == input.Index && l.Slot == slot);
        if (leaf < 0)
        {
            leaf = _leaves.Count;
            _leaves.Add(new Leaf(input, tensor, slot, model));
        }
        int node = _nodes.FindIndex(n => n.Op == ProgramOp.Leaf && n.Leaf == leaf);
        if (node < 0)
        {
            node = _nodes.Count;
            _nodes.Add(ProgramNode.ForLeaf(leaf));
        }
        return new Form([(node, 1.0)], 1.0);
    }

    private Form? ResolveMerge(MergeNode node)
    {
        var method = node.Method;
        if (method.Kind == MethodKind.Selection)
        {
            if (method == MergeMethods.Fallback) return Resolve(node.Inputs[0]) ?? Resolve(node.Inputs[1]);
            bool inComponent = InComponent(node.Arguments.Text("component"));
            return inComponent == (method == MergeMethods.PickComponent) ? Resolve(node.Inputs[0]) : null;
        }

        var present = new List<Form>(node.Inputs.Length);
        foreach (var input in node.Inputs)
        {
            var form = Resolve(input);
            if (form is not null) present.Add(form);
            else if (!(node.DropAbsent && method.IsVariadic)) return null;
        }
        if (present.Count == 0) return null;

        if (method.Kind == MethodKind.Linear)
        {
            var (coefficients, divisor) = method.Linear!(node.Arguments, present.Count);
            var terms = ImmutableArray.CreateBuilder<(int, double)>();
            for (int i = 0; i < present.Count; i++)
            {
                if (coefficients[i] == 0) continue; // sd-mecha returns the other input outright (alpha 0 or 1)
                foreach (var (n, c) in present[i].Terms)
                    terms.Add((n, present[i].Divisor == 1.0 ? coefficients[i] * c : coefficients[i] * c / present[i].Divisor));
            }
            return new Form(terms.ToImmutable(), divisor);
        }

        var inputsOf = present.Select(Materialize).ToImmutableArray();
        _nodes.Add(new ProgramNode(ProgramOp.Method, -1, inputsOf, [], 1.0, method, node.Arguments));
        return new Form([(_nodes.Count - 1, 1.0)], 1.0);
    }

    /// <summary>The node holding a form's values: the node itself, or a new linear node.</summary>
    private int Materialize(Form form)
    {
        if (form.Terms.Length == 1 && form.Terms[0].Coefficient == 1.0 && form.Divisor == 1.0) return form.Terms[0].Node;
        _nodes.Add(new ProgramNode(ProgramOp.Linear, -1, [.. form.Terms.Select(t => t.Node)], [.. form.Terms.Select(t => t.Coefficient)], form.Divisor, null, null));
        return _nodes.Count - 1;
    }

    /// <summary>Whether the key is in a component of the .mecha model config (its sd-mecha key group), or of ours in YAML.</summary>
    private bool InComponent(string component)
    {
        var config = recipe.ModelConfig ?? ModelArchitecture.Sdxl;
        return config.TryGetKey(_key, out var spec) && spec.Group == component;
    }

    /// <summary>The input's tensor for the key, also under an older name the architecture lists as its alias.</summary>
    private TensorInfo? Find(MergeInput input)
    {
        if (input.Header.TryGet(_key, out var t)) return t;
        if (recipe.ModelConfig is { } config && config.TryGetKey(_key, out var spec))
            foreach (string alias in spec.Aliases)
                if (input.Header.TryGet(alias, out var a)) return a;
        return null;
    }

    private PlannedTensor CopyOf(MergeInput input, TensorInfo t, int index, string? filledFrom)
    {
        var dtype = t.DType.IsFloat() ? recipe.Output.DType : t.DType;
        var output = new TensorInfo(_key, dtype, t.Shape, 0, 0);
        return new PlannedTensor(index, output, _component, TensorOp.Copy, [new TermSource(input.Index, t, 1.0, 0)], 1.0, filledFrom);
    }

    private void Note(string model, string resolution)
    {
        if (!missing.TryGetValue((model, _component, resolution), out var list)) missing[(model, _component, resolution)] = list = [];
        if (!list.Contains(_key)) list.Add(_key);
    }
}
