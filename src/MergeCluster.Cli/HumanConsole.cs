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
}
