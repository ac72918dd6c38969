namespace MergeCluster.Cluster.Tests.Infrastructure;

/// <summary>What a running process has open, read from /proc: the TCP ports it listens on and the files it has mapped.</summary>
public static class ProcessSockets
{
    /// <summary>Local ports of the TCP sockets in LISTEN state that the process holds (IPv4 and IPv6).</summary>
    public static IReadOnlySet<int> ListeningPorts(int pid)
    {
        var inodes = new HashSet<string>(StringComparer.Ordinal);
        foreach (var fd in Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd"))
        {
            string? target;
            try { target = new FileInfo(fd).LinkTarget; }
            catch (IOException) { continue; } // closed while we looked
            if (target is not null && target.StartsWith("socket:[", StringComparison.Ordinal)) inodes.Add(target[8..^1]);
        }
        var ports = new HashSet<int>();
        foreach (var table in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
        {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
            foreach (var line in File.ReadLines(table).Skip(1))
            {
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f[3] == "0A" && inodes.Contains(f[9])) ports.Add(Convert.ToInt32(f[1][(f[1].LastIndexOf(':') + 1)..], 16));
            }
        }
        return ports;
    }

    /// <summary>The distinct file paths the process has mapped (its loaded native libraries and assemblies).</summary>
    public static IReadOnlySet<string> MappedFiles(int pid) =>
        File.ReadLines($"/proc/{pid}/maps").Select(l => l.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries)).Where(f => f.Length == 6 && f[5].StartsWith('/'))
            .Select(f => f[5]).ToHashSet(StringComparer.Ordinal);
}
