using System.Text.RegularExpressions;

namespace MergeCluster.Merge.Numerics;

/// <summary>
/// The supermerger block naming for per-block alphas: BASE (everything outside the UNET), IN00-IN11, M00, OUT00-OUT11.
/// SDXL uses IN00-IN08 and OUT00-OUT08. As in the A1111 block-weighted merger, time and label embeddings count as IN00
/// and the final `out.` layers as the last OUT block.
/// </summary>
public static partial class UnetBlocks
{
    public const string Base = "BASE";
    private const string UnetPrefix = "model.diffusion_model.";

    public static readonly IReadOnlyList<string> Sd1Names = Names(12);
    public static readonly IReadOnlyList<string> SdxlNames = Names(9);

    public static bool IsBlockName(string name) => Sd1Names.Contains(name);

    /// <summary>Block names for an ordered list of alphas of this length, or null.</summary>
    public static IReadOnlyList<string>? NamesForCount(int count) => count switch
    {
        26 => Sd1Names,
        20 => SdxlNames,
        _ => null,
    };

    /// <summary>The block a tensor key belongs to, for a UNET with <paramref name="blocksPerSide"/> input blocks (SD1 12, SDXL 9).</summary>
    public static string BlockOf(string key, int blocksPerSide)
    {
        if (!key.StartsWith(UnetPrefix, StringComparison.Ordinal)) return Base;
        var m = BlockPattern().Match(key, UnetPrefix.Length);
        if (m.Success && m.Index == UnetPrefix.Length)
        {
            int i = int.Parse(m.Groups[2].ValueSpan);
            return m.Groups[1].ValueSpan switch
            {
                "input_blocks" => $"IN{i:00}",
                "output_blocks" => $"OUT{i:00}",
                _ => "M00",
            };
        }
        if (key.AsSpan(UnetPrefix.Length).StartsWith("out.")) return $"OUT{blocksPerSide - 1:00}";
        return "IN00"; // time_embed and label_emb come before the first input block
    }

    /// <summary>The alpha for a key: its block's if the rule gives one, else the rule's default.</summary>
    public static double AlphaFor(string key, int blocksPerSide, double defaultAlpha, IReadOnlyDictionary<string, double> blockAlphas) =>
        blockAlphas.Count != 0 && blockAlphas.TryGetValue(BlockOf(key, blocksPerSide), out double a) ? a : defaultAlpha;

    private static IReadOnlyList<string> Names(int perSide)
    {
        var names = new List<string> { Base };
        for (int i = 0; i < perSide; i++) names.Add($"IN{i:00}");
        names.Add("M00");
        for (int i = 0; i < perSide; i++) names.Add($"OUT{i:00}");
        return names;
    }

    [GeneratedRegex(@"(input_blocks|output_blocks|middle_block)\.(\d+)\.")]
    private static partial Regex BlockPattern();
}
