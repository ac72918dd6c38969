using MergeCluster.Merge.Architecture;
using YamlDotNet.RepresentationModel;

namespace MergeCluster.Merge.Recipes;

/// <summary>A recipe derived from another: its name (for the file) and its YAML text.</summary>
public sealed record RecipeVariant(string Model, string Text);

/// <summary>
/// Writes the candidate recipes of a sweep as YAML edits of the original: a component's rule without one model (its
/// weight goes with it), or with the component copied from one model. Everything else, `models:` included, stays as it
/// was, so each model keeps its index and with it its reduction group: the candidates' sums share the original's order.
/// </summary>
public static class RecipeVariants
{
    /// <summary>For each model of the component's rule, the recipe without it.</summary>
    public static IReadOnlyList<RecipeVariant> LeaveOneOut(Recipe recipe, Component component)
    {
        var rule = RuleOf(recipe, component);
        if (rule.Method is MergeMethod.Copy or MergeMethod.WeightedSum or MergeMethod.AddDifference or MergeMethod.Slerp)
            throw new MergeException($"{recipe.Source}:{rule.Line}: --leave-one-out needs a {component.Name()} rule over a list of models (mean, ties, dare, geometric_median, model_stock), not {MethodName(rule.Method)} of a fixed number");
        if (rule.Models.Length < 2)
            throw new MergeException($"{recipe.Source}:{rule.Line}: the {component.Name()} rule has one model; leaving it out leaves nothing to merge");
        var result = new List<RecipeVariant>();
        for (int k = 0; k < rule.Models.Length; k++)
        {
            var (stream, map) = Edit(recipe, component);
            Remove(map, "models", k);
            if (map.Children.ContainsKey(new YamlScalarNode("weights"))) Remove(map, "weights", k);
            result.Add(new RecipeVariant(rule.Models[k], Save(stream)));
        }
        return result;
    }

    /// <summary>For each of <paramref name="models"/>, the recipe with the component copied from that model alone.</summary>
    public static IReadOnlyList<RecipeVariant> Swap(Recipe recipe, Component component, IEnumerable<string> models)
    {
        if (recipe.Format != RecipeFormat.Yaml) throw NotYaml(recipe);
        var result = new List<RecipeVariant>();
        foreach (string model in models)
        {
            var (stream, map) = Edit(recipe, component);
            var missing = map.Children.TryGetValue(new YamlScalarNode("missing"), out var m) ? m : null;
            map.Children.Clear();
            map.Children.Add(new YamlScalarNode("method"), new YamlScalarNode("copy"));
            map.Children.Add(new YamlScalarNode("model"), new YamlScalarNode(model));
            if (missing is not null) map.Children.Add(new YamlScalarNode("missing"), missing);
            map.Style = YamlDotNet.Core.Events.MappingStyle.Flow;
            result.Add(new RecipeVariant(model, Save(stream)));
        }
        return result;
    }

    /// <summary>The recipe text with `output.path` set (a path relative to the recipe's directory, as written there).</summary>
    public static string WithOutputPath(string text, string path)
    {
        var stream = Load(text, "recipe");
        var root = (YamlMappingNode)stream.Documents[0].RootNode;
        var key = new YamlScalarNode("output");
        if (root.Children.TryGetValue(key, out var output) && output is YamlMappingNode map) map.Children[new YamlScalarNode("path")] = new YamlScalarNode(path);
        else if (output is YamlScalarNode) root.Children[key] = new YamlScalarNode(path); // `output: out.safetensors`
        else throw new MergeException("recipe has no output: path or mapping");
        return Save(stream);
    }

    private static ComponentRule RuleOf(Recipe recipe, Component component)
    {
        if (recipe.Format != RecipeFormat.Yaml) throw NotYaml(recipe);
        return recipe.RuleFor(component) ?? throw new MergeException($"{recipe.Source}: the recipe has no rule for {component.Name()} (it is copied from the base), so there is no model list to leave one out of");
    }

    private static MergeException NotYaml(Recipe recipe) =>
        new($"{recipe.Source}: a sweep edits a YAML recipe's component rules; a .mecha recipe is one tree (convert it to YAML first)");

    /// <summary>A fresh parse of the recipe and the component's own rule mapping (made from `all`, or added, when it has none).</summary>
    private static (YamlStream Stream, YamlMappingNode Rule) Edit(Recipe recipe, Component component)
    {
        var stream = Load(recipe.Text, recipe.Source);
        var root = (YamlMappingNode)stream.Documents[0].RootNode;
        var componentsKey = new YamlScalarNode("components");
        if (!root.Children.TryGetValue(componentsKey, out var node) || node is not YamlMappingNode components)
        {
            components = new YamlMappingNode();
            root.Children[componentsKey] = components;
        }
        var key = new YamlScalarNode(component.Name());
        if (components.Children.TryGetValue(key, out var own) && own is YamlMappingNode rule) return (stream, rule);
        rule = components.Children.TryGetValue(new YamlScalarNode(Recipe.AllComponents), out var all) && all is YamlMappingNode shared
            ? Clone(shared)
            : new YamlMappingNode();
        components.Children[key] = rule;
        return (stream, rule);
    }

    private static YamlMappingNode Clone(YamlMappingNode map)
    {
        var stream = new YamlStream(new YamlDocument(map));
        var copy = Load(Save(stream), "rule");
        return (YamlMappingNode)copy.Documents[0].RootNode;
    }

    private static void Remove(YamlMappingNode map, string key, int index)
    {
        if (!map.Children.TryGetValue(new YamlScalarNode(key), out var node) || node is not YamlSequenceNode list || index >= list.Children.Count)
            throw new MergeException($"the rule's {key} is not a list with an entry {index + 1}");
        list.Children.RemoveAt(index);
    }

    private static YamlStream Load(string text, string source)
    {
        var stream = new YamlStream();
        try { stream.Load(new StringReader(text)); }
        catch (YamlDotNet.Core.YamlException e) { throw new MergeException($"{source}:{e.Start.Line}: invalid YAML: {e.Message}", e); }
        if (stream.Documents.Count == 0 || stream.Documents[0].RootNode is not YamlMappingNode)
            throw new MergeException($"{source}:1: a recipe must be a YAML mapping");
        return stream;
    }

    private static string Save(YamlStream stream)
    {
        var writer = new StringWriter();
        stream.Save(writer, assignAnchors: false);
        string text = writer.ToString();
        // YamlStream ends each document with an explicit "..." marker; a recipe file has none.
        int end = text.LastIndexOf("...", StringComparison.Ordinal);
        if (end >= 0 && text[(end + 3)..].Trim().Length == 0) text = text[..end];
        return text.TrimEnd() + "\n";
    }

    private static string MethodName(MergeMethod method) => method switch
    {
        MergeMethod.WeightedSum => "weighted_sum",
        MergeMethod.AddDifference => "add_difference",
        var m => m.ToString().ToLowerInvariant(),
    };
}
