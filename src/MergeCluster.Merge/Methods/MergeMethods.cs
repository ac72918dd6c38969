using System.Collections.Frozen;
using System.Collections.Immutable;

namespace MergeCluster.Merge.Methods;

/// <summary>What a method does with its inputs, which decides how the planner runs it.</summary>
public enum MethodKind
{
    /// <summary>A fixed linear combination: composes into coefficients over the models and runs on the exact summation path.</summary>
    Linear,
    /// <summary>Non-linear over a whole tensor: runs as a <see cref="TensorMethod"/>, a fused task per shard.</summary>
    Tensor,
    /// <summary>Chooses between inputs by key (pick_component, omit_component, fallback); no arithmetic.</summary>
    Selection,
}

/// <summary>Whether a method's values are weights (a model) or deltas (a model minus a base), as sd-mecha's merge spaces.</summary>
public enum MergeSpace { Weight, Delta, Same }

/// <summary>
/// One merge method: its sd-mecha 1.1.5 identifier, inputs, parameters (in sd-mecha's signature order), what it
/// computes, and the sd-mecha function it follows.
/// </summary>
public sealed class MergeMethodDefinition
{
    public required string Name { get; init; }
    public required MethodKind Kind { get; init; }
    public required int MinInputs { get; init; }
    /// <summary>int.MaxValue for a variadic method (*models).</summary>
    public required int MaxInputs { get; init; }
    public ImmutableArray<ParameterSpec> Parameters { get; init; } = [];
    /// <summary>How many leading parameters may be given positionally after the inputs (sd-mecha's positional-or-keyword ones).</summary>
    public int PositionalParameters { get; init; }
    /// <summary>The merge space its inputs must be in, and its result's (Same: the inputs').</summary>
    public MergeSpace InputSpace { get; init; } = MergeSpace.Same;
    public MergeSpace OutputSpace { get; init; } = MergeSpace.Same;
    /// <summary>For add_difference: the second input is a delta whatever the first is.</summary>
    public bool SecondInputIsDelta { get; init; }
    /// <summary>The sd-mecha function this follows; null for MergeCluster's own methods, which .mecha cannot carry.</summary>
    public string? Citation { get; init; }
    /// <summary>Linear methods: the coefficient of each input and the divisor of their sum.</summary>
    public Func<MethodArguments, int, (double[] Coefficients, double Divisor)>? Linear { get; init; }
    /// <summary>Tensor methods: a fresh evaluation for one tensor.</summary>
    public Func<MethodArguments, TensorContext, TensorMethod>? Create { get; init; }

    public bool IsVariadic => MaxInputs == int.MaxValue;

    /// <summary>Binds named values over the defaults; unknown names and missing required values are errors.</summary>
    public MethodArguments Bind(IReadOnlyDictionary<string, object?> given)
    {
        var values = ImmutableSortedDictionary.CreateBuilder<string, object?>(StringComparer.Ordinal);
        foreach (var p in Parameters) values[p.Name] = p.Default;
        foreach (var (name, value) in given)
        {
            var spec = Parameters.FirstOrDefault(p => p.Name == name)
                ?? throw new MergeException($"{Name} has no parameter '{name}' (it takes {(Parameters.IsEmpty ? "none" : string.Join(", ", Parameters.Select(p => p.Name)))})");
            values[name] = Coerce(spec, value);
        }
        foreach (var p in Parameters)
            if (p.Required && !given.ContainsKey(p.Name)) throw new MergeException($"{Name} needs {p.Name}");
        return new MethodArguments(values.ToImmutable());
    }

    private object? Coerce(ParameterSpec spec, object? value) => (spec.Type, value) switch
    {
        (_, null) => null,
        (ParameterType.Number, double or long) => Convert.ToDouble(value, System.Globalization.CultureInfo.InvariantCulture),
        (ParameterType.Number, bool b) => b ? 1.0 : 0.0,
        (ParameterType.Integer, long) => value,
        (ParameterType.Integer, double d) when d == Math.Floor(d) && Math.Abs(d) < 9e18 => (long)d,
        (ParameterType.Boolean, bool) => value,
        (ParameterType.Boolean, double d) => d != 0,
        (ParameterType.Boolean, long l) => l != 0,
        (ParameterType.Text, string) => value,
        _ => throw new MergeException($"{Name}: {spec.Name} must be {Article(spec.Type)}, not {MethodArguments.Format(value)}"),
    };

    private static string Article(ParameterType t) => t switch
    {
        ParameterType.Number => "a number",
        ParameterType.Integer => "an integer",
        ParameterType.Boolean => "true or false",
        _ => "a string",
    };
}

/// <summary>
/// The one table of merge methods, by their sd-mecha 1.1.5 identifiers (the names a .mecha `merge` line uses). YAML
/// recipes build trees of the same nodes (see <see cref="Recipes.RecipeTrees"/>).
/// </summary>
public static class MergeMethods
{
    private static readonly ParameterSpec Alpha05 = new("alpha", ParameterType.Number, 0.5);
    private static readonly ParameterSpec Alpha1 = new("alpha", ParameterType.Number, 1.0);
    private static readonly ParameterSpec CosEps = new("cos_eps", ParameterType.Number, 1e-6);
    private static readonly ParameterSpec[] Median =
    [
        new("eps", ParameterType.Number, 1e-6), new("maxiter", ParameterType.Integer, 100L), new("ftol", ParameterType.Number, 1e-20),
    ];

    /// <summary>sd-mecha weighted_sum (linear.py): lerp(a, b, alpha); alpha 0 is a, alpha within 1e-9 of 1 is b (math.isclose).</summary>
    public static readonly MergeMethodDefinition WeightedSum = new()
    {
        Name = "weighted_sum", Kind = MethodKind.Linear, MinInputs = 2, MaxInputs = 2, Parameters = [Alpha05], PositionalParameters = 1,
        Citation = "sd_mecha/extensions/builtin/merge_methods/linear.py: weighted_sum",
        Linear = (args, _) =>
        {
            double a = args.Number("alpha");
            return (a == 0 ? [1.0, 0.0] : Ties.IsCloseToOne(a) ? [0.0, 1.0] : [1 - a, a], 1.0);
        },
    };

    /// <summary>sd-mecha n_average (linear.py): the mean of the inputs (sd-mecha folds it as a chain of lerps; this sums exactly and divides once).</summary>
    public static readonly MergeMethodDefinition NAverage = new()
    {
        Name = "n_average", Kind = MethodKind.Linear, MinInputs = 1, MaxInputs = int.MaxValue,
        Citation = "sd_mecha/extensions/builtin/merge_methods/linear.py: n_average",
        Linear = (_, n) => (Enumerable.Repeat(1.0, n).ToArray(), n),
    };

    /// <summary>sd-mecha add_difference (linear.py, the registered method, not the wrapper): a + alpha·delta; alpha 0 is a.</summary>
    public static readonly MergeMethodDefinition AddDifference = new()
    {
        Name = "add_difference", Kind = MethodKind.Linear, MinInputs = 2, MaxInputs = 2, Parameters = [Alpha1], PositionalParameters = 1,
        SecondInputIsDelta = true, Citation = "sd_mecha/extensions/builtin/merge_methods/linear.py: add_difference",
        Linear = (args, _) => ([1.0, args.Number("alpha")], 1.0),
    };

    /// <summary>sd-mecha subtract (linear.py): a − b, a delta.</summary>
    public static readonly MergeMethodDefinition Subtract = new()
    {
        Name = "subtract", Kind = MethodKind.Linear, MinInputs = 2, MaxInputs = 2, InputSpace = MergeSpace.Weight, OutputSpace = MergeSpace.Delta,
        Citation = "sd_mecha/extensions/builtin/merge_methods/linear.py: subtract",
        Linear = (_, _) => ([1.0, -1.0], 1.0),
    };

    public static readonly MergeMethodDefinition Slerp = new()
    {
        Name = "slerp", Kind = MethodKind.Tensor, MinInputs = 2, MaxInputs = 2, Parameters = [Alpha05], PositionalParameters = 1,
        Citation = "sd_mecha/extensions/builtin/merge_methods/linear.py: slerp",
        Create = (args, _) => new Slerp(args.Number("alpha")),
    };

    public static readonly MergeMethodDefinition GeometricMedian = new()
    {
        Name = "geometric_median", Kind = MethodKind.Tensor, MinInputs = 1, MaxInputs = int.MaxValue, Parameters = [.. Median],
        Citation = "sd_mecha/extensions/builtin/merge_methods/ties.py: geometric_median",
        Create = (args, context) => new GeometricMedian(context.Inputs, args.Number("eps"), (int)Math.Clamp(args.Integer("maxiter"), 0, int.MaxValue), args.Number("ftol")),
    };

    public static readonly MergeMethodDefinition ModelStock = new()
    {
        Name = "model_stock", Kind = MethodKind.Tensor, MinInputs = 1, MaxInputs = int.MaxValue, Parameters = [CosEps],
        InputSpace = MergeSpace.Delta, OutputSpace = MergeSpace.Delta,
        Citation = "sd_mecha/extensions/builtin/merge_methods/ties.py: model_stock",
        Create = (args, context) => new ModelStock(context, args.Number("cos_eps")),
    };

    public static readonly MergeMethodDefinition TiesSum = new()
    {
        Name = "ties_sum", Kind = MethodKind.Tensor, MinInputs = 1, MaxInputs = int.MaxValue,
        Parameters = [new("k", ParameterType.Number, 1.0), new("vote_sgn", ParameterType.Boolean, false)],
        InputSpace = MergeSpace.Delta, OutputSpace = MergeSpace.Delta,
        Citation = "sd_mecha/extensions/builtin/merge_methods/ties.py: ties_sum",
        Create = (args, context) => new Ties(context, new TiesSettings(args.Number("k"), args.Boolean("vote_sgn"))),
    };

    public static readonly MergeMethodDefinition TiesSumExtended = new()
    {
        Name = "ties_sum_extended", Kind = MethodKind.Tensor, MinInputs = 1, MaxInputs = int.MaxValue,
        Parameters =
        [
            new("k", ParameterType.Number, 0.2), new("vote_sgn", ParameterType.Boolean, false), new("apply_stock", ParameterType.Boolean, false),
            new("apply_median", ParameterType.Boolean, false), CosEps, .. Median,
        ],
        InputSpace = MergeSpace.Delta, OutputSpace = MergeSpace.Delta,
        Citation = "sd_mecha/extensions/builtin/merge_methods/ties.py: ties_sum_extended",
        Create = (args, context) => new Ties(context, ExtendedSettings(args)),
    };

    public static readonly MergeMethodDefinition TiesSumWithDropout = new()
    {
        Name = "ties_sum_with_dropout", Kind = MethodKind.Tensor, MinInputs = 1, MaxInputs = int.MaxValue,
        Parameters =
        [
            new("probability", ParameterType.Number, 0.9), new("della_eps", ParameterType.Number, 0.0), new("rescale", ParameterType.Boolean, true),
            new("k", ParameterType.Number, 0.2), new("vote_sgn", ParameterType.Boolean, false), new("apply_stock", ParameterType.Boolean, false),
            CosEps, new("apply_median", ParameterType.Boolean, false), .. Median, new("seed", ParameterType.Integer, null),
        ],
        InputSpace = MergeSpace.Delta, OutputSpace = MergeSpace.Delta,
        Citation = "sd_mecha/extensions/builtin/merge_methods/ties.py: ties_sum_with_dropout",
        Create = (args, context) => new Ties(context, ExtendedSettings(args) with
        {
            Dropout = true,
            DropProbability = args.Number("probability"),
            Rescale = args.Boolean("rescale"),
            Seed = Seed(args),
        }),
    };

    /// <summary>MergeCluster's own DARE without TIES (see <see cref="DareSum"/>).</summary>
    public static readonly MergeMethodDefinition DareSum = new()
    {
        Name = "dare_sum", Kind = MethodKind.Tensor, MinInputs = 1, MaxInputs = int.MaxValue,
        Parameters = [new("probability", ParameterType.Number, 0.9), new("rescale", ParameterType.Boolean, true), new("seed", ParameterType.Integer, 0L)],
        InputSpace = MergeSpace.Delta, OutputSpace = MergeSpace.Delta,
        Create = (args, context) => new DareSum(context, args.Number("probability"), args.Boolean("rescale"), Seed(args)),
    };

    /// <summary>sd-mecha pick_component (logistics.py): the input's keys of one component of the model config, nothing else.</summary>
    public static readonly MergeMethodDefinition PickComponent = new()
    {
        Name = "pick_component", Kind = MethodKind.Selection, MinInputs = 1, MaxInputs = 1,
        Parameters = [new("component", ParameterType.Text, null, Required: true)], PositionalParameters = 1,
        Citation = "sd_mecha/extensions/builtin/merge_methods/logistics.py: pick_component",
    };

    /// <summary>sd-mecha omit_component (logistics.py): the input's keys outside one component.</summary>
    public static readonly MergeMethodDefinition OmitComponent = new()
    {
        Name = "omit_component", Kind = MethodKind.Selection, MinInputs = 1, MaxInputs = 1,
        Parameters = [new("component", ParameterType.Text, null, Required: true)], PositionalParameters = 1,
        Citation = "sd_mecha/extensions/builtin/merge_methods/logistics.py: omit_component",
    };

    /// <summary>sd-mecha fallback (logistics.py, the `a | b` of recipes): a's value for a key, else default's.</summary>
    public static readonly MergeMethodDefinition Fallback = new()
    {
        Name = "fallback", Kind = MethodKind.Selection, MinInputs = 2, MaxInputs = 2,
        Citation = "sd_mecha/extensions/builtin/merge_methods/logistics.py: fallback",
    };

    public static FrozenDictionary<string, MergeMethodDefinition> All { get; } = new[]
    {
        WeightedSum, NAverage, AddDifference, Subtract, Slerp, GeometricMedian, ModelStock, TiesSum, TiesSumExtended, TiesSumWithDropout,
        DareSum, PickComponent, OmitComponent, Fallback,
    }.ToFrozenDictionary(m => m.Name, StringComparer.Ordinal);

    public static MergeMethodDefinition? Find(string name) => All.GetValueOrDefault(name);

    private static TiesSettings ExtendedSettings(MethodArguments args)
    {
        // sd-mecha 1.1.5 ties_sum_extended: `t = 1.0 if apply_stock else get_model_stock_t(...)`, so stock scaling happens
        // when apply_stock is false. Median wins over both.
        var reduction = args.Boolean("apply_median") ? TiesReduction.Median : args.Boolean("apply_stock") ? TiesReduction.Mean : TiesReduction.Stock;
        return new TiesSettings(args.Number("k"), args.Boolean("vote_sgn"), reduction, args.Number("cos_eps"), args.Number("eps"),
            (int)Math.Clamp(args.Integer("maxiter"), 0, int.MaxValue), args.Number("ftol"));
    }

    /// <summary>sd-mecha's seed=None draws a fresh generator; a merge here must be reproducible, so None is seed 0.</summary>
    private static ulong Seed(MethodArguments args) => args.IsNull("seed") ? 0UL : unchecked((ulong)args.Integer("seed"));
}
