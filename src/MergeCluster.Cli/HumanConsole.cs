using Spectre.Console;

namespace MergeCluster.Cli;

/// <summary>The console for human-readable output: colours and box drawing on a terminal, plain ASCII when piped or redirected.</summary>
public static class HumanConsole
{
    public static bool Interactive => !Console.IsOutputRedirected;

    /// <summary>Table borders that survive logs and terminals without Unicode.</summary>
    public static TableBorder Border => Interactive ? TableBorder.Rounded : TableBorder.Ascii;

    public static IAnsiConsole Create()
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = Interactive ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = Interactive ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Out = new AnsiConsoleOutput(Console.Out),
        });
        if (!Interactive)
        {
            // A pipe has no width; without this Spectre wraps long keys at 80 columns.
            console.Profile.Width = 4096;
            console.Profile.Capabilities.Unicode = false;
        }
        return console;
    }

    /// <summary>
    /// A percentage on stderr, rewritten in place a few times a second, when stderr is a terminal; null otherwise, so
    /// logs and tests see only the final result.
    /// </summary>
    public static TerminalProgress? ByteProgress(string label) => Console.IsErrorRedirected ? null : new TerminalProgress(label);
}

/// <summary>Progress of a long write as "label: 42% of 6.94 GB" on one terminal line; reports may come from any thread.</summary>
public sealed class TerminalProgress(string label) : IProgress<(long Done, long Total)>, IDisposable
{
    private long _lastTicks;
    private bool _shown;

    public void Report((long Done, long Total) value)
    {
        long now = Environment.TickCount64;
        long last = Interlocked.Read(ref _lastTicks);
        if (now - last < 250 || Interlocked.CompareExchange(ref _lastTicks, now, last) != last) return;
        _shown = true;
        Console.Error.Write($"\r{label}: {100.0 * value.Done / Math.Max(1, value.Total):F0}% of {Units.Bytes(value.Total)}");
    }

    /// <summary>Ends the progress line so the next output starts on a fresh one.</summary>
    public void Dispose()
    {
        if (_shown) Console.Error.WriteLine();
    }
}
