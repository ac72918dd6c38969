namespace MergeCluster.Cluster;

/// <summary>Exceptions as the one line a log, a status or a CLI error shows.</summary>
public static class ErrorText
{
    /// <summary>The message, unwrapping one aggregate (a task's fault).</summary>
    public static string OneLine(Exception e) => (e is AggregateException { InnerException: { } inner } ? inner : e).Message.ReplaceLineEndings(" ");

    /// <summary>The innermost message: storage and Orleans errors arrive wrapped several times over, each wrapper quoting the rest.</summary>
    public static string Innermost(Exception e)
    {
        while (e.InnerException is not null) e = e.InnerException;
        return e.Message.ReplaceLineEndings(" ");
    }
}
