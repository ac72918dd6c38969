using System.Runtime.InteropServices;

namespace MergeCluster.Cluster.Tests.Infrastructure;

/// <summary>kill(2) for the processes tests start: SIGTERM (a drain), SIGSTOP and SIGCONT (a freeze).</summary>
public static partial class Signals
{
    public const int Term = 15, Stop = 19, Continue = 18;

    public static void Send(int pid, int signal)
    {
        if (Kill(pid, signal) != 0) throw new InvalidOperationException($"kill -{signal} {pid} failed: errno {Marshal.GetLastPInvokeError()}");
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);
}
