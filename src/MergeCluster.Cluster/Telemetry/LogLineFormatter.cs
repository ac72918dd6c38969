using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Logging.Console;

namespace MergeCluster.Cluster.Telemetry;

/// <summary>
/// One line per log event: UTC time, level, the last part of the category, the message, and an exception as its
/// innermost type and message (no stack trace: Orleans and Azure warnings otherwise run to dozens of lines during a
/// storage outage). Any storage secret is scrubbed, whoever wrote the line, and control characters are escaped.
/// </summary>
internal sealed class LogLineFormatter() : ConsoleFormatter(Name)
{
    public new const string Name = "mergecluster";

    public override void Write<TState>(in LogEntry<TState> entry, IExternalScopeProvider? scopeProvider, TextWriter textWriter)
    {
        var message = entry.Formatter(entry.State, entry.Exception);
        if (entry.Exception is { } e)
        {
            while (e.InnerException is not null) e = e.InnerException;
            message = $"{message} ({e.GetType().Name}: {e.Message})";
        }
        int dot = entry.Category.LastIndexOf('.');
        var category = dot >= 0 ? entry.Category[(dot + 1)..] : entry.Category;
        var line = $"{DateTime.UtcNow:HH:mm:ss.fff} {Level(entry.LogLevel)} {category}: {message.ReplaceLineEndings(" ")}";
        // Keys, paths and errors quoted from checkpoints reach a terminal as text, never as its control sequences.
        textWriter.WriteLine(Terminal.Escape(StorageConnection.ScrubAll(line)));
    }

    private static string Level(LogLevel level) => level switch
    {
        LogLevel.Trace => "trce",
        LogLevel.Debug => "dbug",
        LogLevel.Information => "info",
        LogLevel.Warning => "warn",
        LogLevel.Error => "fail",
        _ => "crit",
    };
}
