using System.Collections.Immutable;
using MergeCluster.Merge.Methods;

namespace MergeCluster.Merge.Recipes;

/// <summary>
/// A node of a recipe tree, as sd-mecha's recipes are: models are the leaves, merge nodes apply a method of
/// <see cref="MergeMethods"/> to other nodes with constant parameters. A YAML rule becomes one tree per component
/// (<see cref="RecipeTrees"/>); a .mecha file is one tree (<see cref="MechaFormat"/>). Nodes are compared by reference:
/// a node a recipe uses twice (a .mecha <c>&amp;n</c>) is computed once.
/// </summary>
public abstract class RecipeNode
{
    private protected RecipeNode(int line) => Line = line;

    /// <summary>The recipe line that defines the node, for messages.</summary>
    public int Line { get; }
}

/// <summary>A model of the recipe by name: its tensors are the tree's values at this leaf.</summary>
public sealed class ModelNode(string model, int line) : RecipeNode(line)
{
    public string Model { get; } = model;
    public override string ToString() => Model;
}

/// <summary>A method applied to input nodes.</summary>
/// <param name="dropAbsent">
/// YAML semantics for a variadic method: inputs that lack a key (a pruned model under <c>missing: skip</c>) are left
/// out. Without it, as in sd-mecha, a missing input makes the node lack the key too (a fallback can then supply it).
/// </param>
public sealed class MergeNode(MergeMethodDefinition method, ImmutableArray<RecipeNode> inputs, MethodArguments arguments, int line, bool dropAbsent = false)
    : RecipeNode(line)
{
    public MergeMethodDefinition Method { get; } = method;
    public ImmutableArray<RecipeNode> Inputs { get; } = inputs;
    public MethodArguments Arguments { get; } = arguments;
    public bool DropAbsent { get; } = dropAbsent;

    public override string ToString() => $"{Method.Name}({string.Join(", ", Inputs)})";
}
