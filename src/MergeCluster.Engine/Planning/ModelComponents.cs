namespace MergeCluster.Engine.Planning;

/// <summary>Temporary key-to-component mapping until the architecture tables land.</summary>
internal static class ModelComponents
{
    public static string Of(string key)
    {
        if (key.StartsWith("model.diffusion_model.", StringComparison.Ordinal)) return "unet";
        if (key.StartsWith("conditioner.embedders.0.", StringComparison.Ordinal) || key.StartsWith("cond_stage_model.", StringComparison.Ordinal)) return "te0";
        if (key.StartsWith("conditioner.embedders.1.", StringComparison.Ordinal)) return "te1";
        if (key.StartsWith("first_stage_model.", StringComparison.Ordinal)) return "vae";
        return "other";
    }
}
