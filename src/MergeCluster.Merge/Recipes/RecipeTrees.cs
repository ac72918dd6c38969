using System.Collections.Immutable;
using MergeCluster.Merge.Methods;

namespace MergeCluster.Merge.Recipes;

/// <summary>
/// The YAML methods as recipe trees of <see cref="MergeMethods"/> nodes, shaped as sd-mecha's wrappers build them
/// (add_difference_ties, n_model_stock, add_ties_with_dare): the tree a non-linear rule is planned from, and the tree
/// `recipe export --mecha` writes.
/// </summary>
public static class RecipeTrees
{
    /// <summary>The settings each YAML method takes besides models, base, alpha and missing, with their defaults.</summary>
    public static ImmutableArray<ParameterSpec> Options(MergeMethod method) => method switch
    {
        MergeMethod.GeometricMedian => [new("eps", ParameterType.Number, 1e-6), new("maxiter", ParameterType.Integer, 100L), new("ftol", ParameterType.Number, 1e-20)],
        MergeMethod.ModelStock => [new("cos_eps", ParameterType.Number, 1e-6)],
        MergeMethod.Ties => [new("k", ParameterType.Number, 1.0), new("vote_sgn", ParameterType.Boolean, false)],
        MergeMethod.Dare =>
        [
            new("probability", ParameterType.Number, 0.9), new("rescale", ParameterType.Boolean, true), new("seed", ParameterType.Integer, 0L),
            new("ties", ParameterType.Boolean, true), new("k", ParameterType.Number, 1.0), new("vote_sgn", ParameterType.Boolean, false),
        ],
        _ => [],
    };

    /// <summary>Default alpha of a method that takes one (weighted_sum and add_difference require it).</summary>
    public static double? DefaultAlpha(MergeMethod method) => method switch
    {
        MergeMethod.Ties or MergeMethod.Dare or MergeMethod.ModelStock => 1.0,
        MergeMethod.Slerp => 0.5,
        _ => null,
    };

    /// <summary>Methods computed from task vectors against a base.</summary>
    public static bool NeedsBase(MergeMethod method) => method is MergeMethod.Ties or MergeMethod.Dare or MergeMethod.ModelStock;

    /// <summary>Methods that need per-tensor statistics: planned from their tree and run by the tensor evaluator.</summary>
    public static bool IsNonLinear(MergeMethod method) => method is MergeMethod.GeometricMedian or MergeMethod.ModelStock or MergeMethod.Ties or MergeMethod.Dare or MergeMethod.Slerp;

    /// <summary>The rule's tree. <paramref name="leaf"/> makes the node of a model (export wraps it in a fallback to the base).</summary>
    public static RecipeNode For(ComponentRule rule, Func<string, RecipeNode>? leaf = null)
    {
        leaf ??= name => new ModelNode(name, rule.Line);
        int line = rule.Line;
        var models = rule.Models.Select(leaf).ToImmutableArray();
        MergeNode Node(MergeMethodDefinition method, ImmutableArray<RecipeNode> inputs, IReadOnlyDictionary<string, object?>? args = null, bool drop = false) =>
            new(method, inputs, method.Bind(args ?? new Dictionary<string, object?>()), line, drop);
        object? Option(string name) => rule.Options.TryGetValue(name, out var v) ? v : Options(rule.Method).First(p => p.Name == name).Default;
        ImmutableArray<RecipeNode> Deltas(RecipeNode baseNode) =>
            models.Select(m => (RecipeNode)Node(MergeMethods.Subtract, [m, baseNode])).ToImmutableArray();

        switch (rule.Method)
        {
            case MergeMethod.Copy:
                return models[0];
            case MergeMethod.Mean when rule.Weights.IsEmpty:
                return Node(MergeMethods.NAverage, models, drop: true);
            case MergeMethod.Mean:
                {
                    // Σ wᵢxᵢ / Σ wᵢ as the chain of lerps sd-mecha's n_average is: r = lerp(r, xᵢ, wᵢ / Σⱼ≤ᵢ wⱼ).
                    RecipeNode? result = null;
                    double total = 0;
                    for (int i = 0; i < models.Length; i++)
                    {
                        double w = rule.Weights[i];
                        if (w == 0) continue;
                        total += w;
                        result = result is null ? models[i] : Node(MergeMethods.WeightedSum, [result, models[i]], new Dictionary<string, object?> { ["alpha"] = w / total });
                    }
                    return result!;
                }
            case MergeMethod.WeightedSum:
                if (rule.BlockAlphas.Count > 0)
                    throw new MergeException($"line {line}: per-block alphas (alphas:) have no .mecha form here yet; write one weighted_sum per block");
                return Node(MergeMethods.WeightedSum, models, new Dictionary<string, object?> { ["alpha"] = rule.Alpha });
            case MergeMethod.AddDifference:
                return Node(MergeMethods.AddDifference, [models[0], Node(MergeMethods.Subtract, [models[1], models[2]])], new Dictionary<string, object?> { ["alpha"] = rule.Alpha });
            case MergeMethod.Slerp:
                return Node(MergeMethods.Slerp, models, new Dictionary<string, object?> { ["alpha"] = rule.Alpha });
            case MergeMethod.GeometricMedian:
                return Node(MergeMethods.GeometricMedian, models,
                    new Dictionary<string, object?> { ["eps"] = Option("eps"), ["maxiter"] = Option("maxiter"), ["ftol"] = Option("ftol") }, drop: true);
        }

        var baseNode = leaf(rule.DeltaBase ?? throw new MergeException($"line {line}: {rule.Method} needs a base"));
        var deltas = Deltas(baseNode);
        MergeNode merged = rule.Method switch
        {
            // sd-mecha n_model_stock.
            MergeMethod.ModelStock => Node(MergeMethods.ModelStock, deltas, new Dictionary<string, object?> { ["cos_eps"] = Option("cos_eps") }, drop: true),
            // sd-mecha add_difference_ties.
            MergeMethod.Ties => Node(MergeMethods.TiesSum, deltas, new Dictionary<string, object?> { ["k"] = Option("k"), ["vote_sgn"] = Option("vote_sgn") }, drop: true),
            // sd-mecha add_ties_with_dare, with the plain disjoint mean: in 1.1.5 that is apply_stock=true (see Ties).
            MergeMethod.Dare when (bool)Option("ties")! => Node(MergeMethods.TiesSumWithDropout, deltas, new Dictionary<string, object?>
            {
                ["probability"] = Option("probability"), ["rescale"] = Option("rescale"), ["seed"] = Option("seed"),
                ["k"] = Option("k"), ["vote_sgn"] = Option("vote_sgn"), ["apply_stock"] = true,
            }, drop: true),
            MergeMethod.Dare => Node(MergeMethods.DareSum, deltas, new Dictionary<string, object?>
            {
                ["probability"] = Option("probability"), ["rescale"] = Option("rescale"), ["seed"] = Option("seed"),
            }, drop: true),
            _ => throw new InvalidOperationException(rule.Method.ToString()),
        };
        return Node(MergeMethods.AddDifference, [baseNode, merged], new Dictionary<string, object?> { ["alpha"] = rule.Alpha });
    }
}
