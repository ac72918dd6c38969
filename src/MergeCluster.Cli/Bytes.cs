namespace MergeCluster.Cli;

/// <summary>Human-readable byte counts (decimal units, as disk sizes are quoted).</summary>
public static class Bytes
{
    public static string Format(long bytes) => bytes switch
    {
        >= 1_000_000_000 => $"{bytes / 1e9:F2} GB",
        >= 1_000_000 => $"{bytes / 1e6:F1} MB",
        >= 1_000 => $"{bytes / 1e3:F1} kB",
        _ => $"{bytes} B",
    };
}
