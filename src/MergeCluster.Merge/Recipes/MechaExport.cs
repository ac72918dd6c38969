using System.Collections.Immutable;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Methods;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Recipes;

/// <summary>
/// A YAML recipe as one sd-mecha tree: each component's rule picked out of its own tree (pick_component), an `all`
/// rule for the components without one (omit_component), the base as the last fallback; a model that may lack keys
/// under `missing: base` is fallback(model, base), sd-mecha's way of repairing a pruned model.
/// </summary>
public static class MechaExport
{
    /// <summary>The .mecha text of <paramref name="recipe"/> for models of <paramref name="architecture"/>.</summary>
    /// <param name="pathOf">The path to write for a model of the recipe.</param>
    public static string Write(Recipe recipe, ModelArchitecture architecture, Func<RecipeModel, string> pathOf)
    {
        if (recipe.Format == RecipeFormat.Mecha) return recipe.Text;
        var models = new Dictionary<string, ModelNode>(StringComparer.Ordinal);
        ModelNode Model(string name) => models.TryGetValue(name, out var m) ? m : models[name] = new ModelNode(name, 0);
        MergeNode Node(MergeMethodDefinition method, ImmutableArray<RecipeNode> inputs, string? component = null) =>
            new(method, inputs, method.Bind(component is null ? new Dictionary<string, object?>() : new() { ["component"] = component }), 0);

        RecipeNode Rule(ComponentRule rule)
        {
            var policy = rule.Missing ?? recipe.Missing;
            if (policy == MissingPolicy.Skip)
                throw new MergeException($"{recipe.Source}:{rule.Line}: missing: skip has no .mecha form (sd-mecha leaves out a key that any input lacks); use missing: base or error");
            var tree = RecipeTrees.For(rule, name => policy == MissingPolicy.Base && recipe.Base is { } b && name != b && name != rule.DeltaBase
                ? Node(MergeMethods.Fallback, [Model(name), Model(b)])
                : Model(name));
            return recipe.Base is { } baseName ? Node(MergeMethods.Fallback, [tree, Model(baseName)]) : tree;
        }

        var groups = new List<string>();
        RecipeNode? root = null;
        void Append(RecipeNode node) => root = root is null ? node : Node(MergeMethods.Fallback, [root, node]);
        foreach (var component in Components.All)
        {
            if (!recipe.Components.TryGetValue(component.Name(), out var rule)) continue;
            var own = GroupsOf(component, architecture);
            RecipeNode tree = Rule(rule);
            if (component == Component.Other)
                foreach (string g in Components.All.Where(c => c != Component.Other).SelectMany(c => GroupsOf(c, architecture))) tree = Node(MergeMethods.OmitComponent, [tree], g);
            else
            {
                if (own.Length == 0) continue; // a component this architecture lacks (te1 of SD1)
                tree = Node(MergeMethods.PickComponent, [tree], own[0]);
            }
            groups.AddRange(own);
            Append(tree);
        }
        if (recipe.Components.TryGetValue(Recipe.AllComponents, out var all))
        {
            RecipeNode tree = Rule(all);
            foreach (var component in Components.All)
                if (recipe.Components.ContainsKey(component.Name()))
                    foreach (string g in component == Component.Other ? OtherGroups(architecture) : GroupsOf(component, architecture))
                        tree = Node(MergeMethods.OmitComponent, [tree], g);
            Append(tree);
        }
        if (recipe.Base is { } b) Append(Model(b));
        if (root is null) throw new MergeException($"{recipe.Source}: the recipe has no rule and no base");

        string Path(ModelNode node) => pathOf(recipe.Models[recipe.ModelIndex(node.Model)]);
        var comments = new List<string>
        {
            $"written by mergecluster from {System.IO.Path.GetFileName(recipe.Source)}; MergeCluster rounds to {recipe.Output.DType.Name()} into {recipe.Output.Path}",
        };
        return MechaFormat.Write(root, Path, architecture, comments);
    }

    /// <summary>The sd-mecha key groups of one of our components: unet is diffuser, te0 clip_l, te1 clip_g, vae vae.</summary>
    private static ImmutableArray<string> GroupsOf(Component component, ModelArchitecture architecture)
    {
        string? group = component switch
        {
            Component.Unet => "diffuser",
            Component.Te0 => "clip_l",
            Component.Te1 => "clip_g",
            Component.Vae => "vae",
            _ => null,
        };
        return group is not null && MechaFormat.ComponentNames(architecture).Contains(group) ? [group] : [];
    }

    /// <summary>Groups outside unet, te0, te1 and vae (ema, scheduler).</summary>
    private static IEnumerable<string> OtherGroups(ModelArchitecture architecture) =>
        MechaFormat.ComponentNames(architecture).Except(["diffuser", "clip_l", "clip_g", "vae"]).Order(StringComparer.Ordinal);
}
