using System.CommandLine;
using MergeCluster.Merge;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Recipes;
using MergeCluster.Safetensors;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster recipe export RECIPE --mecha`: a YAML recipe as sd-mecha's .mecha text.</summary>
public static class RecipeCommand
{
    public static Command Create()
    {
        var recipeArg = new Argument<FileInfo>("RECIPE") { Description = "Recipe YAML file" };
        var mecha = new Option<bool>("--mecha") { Description = "Write sd-mecha's .mecha format (version 0.1.0); the only export format so far" };
        var output = new Option<FileInfo?>("--output", "-o") { Description = "File to write (default: stdout); model paths are written relative to it" };
        var export = new Command("export", "Write a recipe in another tool's format") { recipeArg, mecha, output };
        export.SetAction(parse =>
        {
            if (!parse.GetValue(mecha)) throw new MergeException("recipe export needs a format: --mecha");
            var file = parse.GetValue(recipeArg)!;
            var recipe = Recipe.Load(file.FullName);
            var target = parse.GetValue(output);
            string baseDir = target is null ? recipe.Directory : target.Directory!.FullName;
            string text = MechaExport.Write(recipe, Architecture(recipe), model =>
            {
                // Relative paths stay relative, now to where the .mecha file is; absolute ones stay absolute.
                if (Path.IsPathRooted(model.Path)) return model.Path;
                return Path.GetRelativePath(baseDir, recipe.ResolvePath(model.Path));
            });
            // No newline at the end, also on stdout: sd-mecha's parser fails on an empty last line, and users redirect this to a file.
            if (target is null) Console.Out.Write(text);
            else OutputTemp.WriteWhole(target.FullName, System.Text.Encoding.UTF8.GetBytes(text));
            return 0;
        });
        return new Command("recipe", "Work with recipe files") { export };
    }

    /// <summary>The architecture of the recipe's models (read from their headers), which names the .mecha model_config.</summary>
    private static ModelArchitecture Architecture(Recipe recipe)
    {
        ModelArchitecture? found = null;
        for (int i = 0; i < recipe.Models.Length; i++)
        {
            string path = recipe.ModelPath(i);
            if (!File.Exists(path)) throw new MergeException($"{recipe.Source}:{recipe.Models[i].Line}: model '{recipe.Models[i].Name}': {path}: file not found");
            var detected = ModelArchitecture.Detect(SafetensorsFile.ReadHeader(path, out _)).Architecture;
            if (!detected.IsKnown) continue;
            if (found is not null && found != detected)
                throw new MergeException($"{path}: model '{recipe.Models[i].Name}' is {detected.Name}, others are {found.Name}; a .mecha recipe has one model_config");
            found = detected;
        }
        return found ?? throw new MergeException($"{recipe.Source}: no model is SDXL or SD1 by its keys, so there is no sd-mecha model_config to name");
    }
}
