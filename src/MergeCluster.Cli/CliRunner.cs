using System.CommandLine;
using MergeCluster.Cli.Commands;
using MergeCluster.Merge;
using MergeCluster.Safetensors;

namespace MergeCluster.Cli;

/// <summary>Runs the command line and turns every user-facing error into one line on stderr and a non-zero exit.</summary>
public static class CliRunner
{
    public const int ExitUserError = 1;
    public const int ExitUsage = 2;
    public const int ExitInterrupted = 130;
    public const int ExitInternal = 70;

    public static async Task<int> InvokeAsync(RootCommand root, string[] args)
    {
        using var cts = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
        try
        {
            var parse = root.Parse(args);
            var config = new InvocationConfiguration
            {
                EnableDefaultExceptionHandler = false,
                // System.CommandLine ends the process two seconds after SIGTERM; a silo's drain takes as long as its
                // running tasks do (SiloCommand handles the signals itself).
                ProcessTerminationTimeout = parse.CommandResult.Command.Name == SiloCommand.CommandName ? null : TimeSpan.FromSeconds(2),
            };
            return await parse.InvokeAsync(config, cts.Token);
        }
        catch (Exception e) when (Describe(e) is { } line)
        {
            Console.Error.WriteLine($"error: {MergeCluster.Cluster.StorageConnection.ScrubAll(line)}");
            return ExitUserError;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("error: interrupted; existing output files were left untouched");
            return ExitInterrupted;
        }
        catch (Exception e)
        {
            // A bug, not bad input: still one line, with the trace only on request.
            Console.Error.WriteLine($"error: internal {e.GetType().Name}: {MergeCluster.Cluster.StorageConnection.ScrubAll(e.Message.ReplaceLineEndings(" "))}");
            if (Environment.GetEnvironmentVariable("MERGECLUSTER_TRACE") == "1") Console.Error.WriteLine(e);
            return ExitInternal;
        }
    }

    /// <summary>The one-line description of an error a user can act on; null for a bug, which keeps its stack trace.</summary>
    public static string? Describe(Exception e) => e switch
    {
        SafetensorsException s => s.Message,
        MergeException m => m.Message,
        FileNotFoundException f => $"{f.FileName ?? "file"}: not found",
        DirectoryNotFoundException d => d.Message,
        UnauthorizedAccessException u => u.Message,
        IOException io => io.Message,
        AggregateException { InnerExceptions.Count: > 0 } a => Describe(a.InnerExceptions[0]),
        _ when e.InnerException is { } inner && Describe(inner) is { } line => line,
        _ => null,
    };
}
