using MergeCluster.Cluster;
using System.CommandLine;
using System.Runtime.InteropServices;
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
        // SIGINT, SIGTERM and SIGHUP cancel the command, which then removes its temporary files and says so; a second
        // signal is left to its default and ends the process at once. System.CommandLine's own handling is off: it
        // ends the process two seconds after the signal, with no message and whatever temporary file it had open.
        PosixSignal? received = null;
        void OnSignal(PosixSignalContext context)
        {
            if (received is not null || _commandHandlesSignals) return;
            received = context.Signal;
            context.Cancel = true;
            cts.Cancel();
        }
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        using var hangUp = PosixSignalRegistration.Create(PosixSignal.SIGHUP, OnSignal);
        var config = new InvocationConfiguration { EnableDefaultExceptionHandler = false, ProcessTerminationTimeout = null };
        try
        {
            var parse = root.Parse(args);
            int code = await parse.InvokeAsync(config, cts.Token);
            return received is null ? code : Interrupted(received.Value);
        }
        catch (Exception) when (received is not null)
        {
            // Whatever the cancel surfaced as (an OperationCanceledException, or a job reported cancelled), it was the signal.
            return Interrupted(received.Value);
        }
        catch (Exception e) when (Describe(e) is { } line)
        {
            Console.Error.WriteLine($"error: {Terminal.Escape(MergeCluster.Cluster.StorageConnection.ScrubAll(line))}");
            return ExitUserError;
        }
        catch (OperationCanceledException)
        {
            return Interrupted(PosixSignal.SIGINT);
        }
        catch (Exception e)
        {
            // A bug, not bad input: still one line, with the trace only on request.
            Console.Error.WriteLine($"error: internal {e.GetType().Name}: {Terminal.Escape(MergeCluster.Cluster.StorageConnection.ScrubAll(e.Message))}");
            if (Environment.GetEnvironmentVariable("MERGECLUSTER_TRACE") == "1") Console.Error.WriteLine(e);
            return ExitInternal;
        }
    }

    private static volatile bool _commandHandlesSignals;

    /// <summary>For a command with signal handling of its own (a silo drains on SIGTERM and exits 0): signals are then not an interruption.</summary>
    public static void LeaveSignalsToCommand() => _commandHandlesSignals = true;

    /// <summary>The shell's convention: 128 + the signal's number (SIGINT 130, SIGTERM 143, SIGHUP 129).</summary>
    private static int Interrupted(PosixSignal signal)
    {
        var (name, number) = signal switch
        {
            PosixSignal.SIGTERM => ("SIGTERM", 15),
            PosixSignal.SIGHUP => ("SIGHUP", 1),
            _ => ("SIGINT", 2),
        };
        Console.Error.WriteLine($"error: interrupted ({name}); existing output files were left untouched and temporary files removed");
        return 128 + number;
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
