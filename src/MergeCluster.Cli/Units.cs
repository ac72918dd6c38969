namespace MergeCluster.Cli;

/// <summary>Sizes as people read them in command output.</summary>
public static class Units
{
    /// <summary>Decimal units (kB, MB, GB), as disk and model sizes are quoted: 6.94 GB for SDXL in f16.</summary>
    public static string Bytes(long bytes) => bytes switch
    {
        < 1000 => $"{bytes} B",
        < 1_000_000 => $"{bytes / 1e3:F1} kB",
        < 1_000_000_000 => $"{bytes / 1e6:F1} MB",
        _ => $"{bytes / 1e9:F2} GB",
    };
}
