namespace MergeCluster.Merge.Architecture;

/// <summary>The parts of a checkpoint that mix builders merge separately: the UNET, the text encoders, the VAE, and the rest.</summary>
public enum Component
{
    Unet,
    Te0,
    Te1,
    Vae,
    Other,
}

/// <summary>Names of <see cref="Component"/> as users write them: unet, te0, te1, vae, other.</summary>
public static class Components
{
    /// <summary>Every component, in the order reports list them.</summary>
    public static IReadOnlyList<Component> All { get; } = [Component.Unet, Component.Te0, Component.Te1, Component.Vae, Component.Other];

    public static string Name(this Component component) => component switch
    {
        Component.Unet => "unet",
        Component.Te0 => "te0",
        Component.Te1 => "te1",
        Component.Vae => "vae",
        Component.Other => "other",
        _ => throw new ArgumentOutOfRangeException(nameof(component)),
    };

    public static bool TryParse(string name, out Component component)
    {
        switch (name.Trim().ToLowerInvariant())
        {
            case "unet": component = Component.Unet; return true;
            case "te0": component = Component.Te0; return true;
            case "te1": component = Component.Te1; return true;
            case "vae": component = Component.Vae; return true;
            case "other": component = Component.Other; return true;
            default: component = default; return false;
        }
    }

    /// <summary>Parses a component name; an unknown name is a <see cref="MergeException"/> that lists the valid ones.</summary>
    public static Component Parse(string name) =>
        TryParse(name, out var c) ? c : throw new MergeException($"unknown component '{name}'; expected one of unet, te0, te1, vae, other");
}
