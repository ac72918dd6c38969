using System.Net;
using System.Net.Sockets;

namespace MergeCluster.Cluster.Tests.Infrastructure;

/// <summary>
/// Ports for the servers the tests start (silos, HTTP endpoints, collectors), taken below the kernel's ephemeral
/// range: a port the kernel handed out (bind to 0) can be given again to any outgoing connection, the silos' many
/// to Azurite included, before the server binds it, which then fails with "Address already in use".
/// </summary>
public static class TestPorts
{
    private static readonly HashSet<int> Given = [];
    private static readonly (int Low, int High) Range = FreeRange();

    /// <summary>A port no socket holds now, never given before by this process.</summary>
    public static int Free()
    {
        lock (Given)
        {
            for (int attempt = 0; attempt < 1000; attempt++)
            {
                int port = Random.Shared.Next(Range.Low, Range.High);
                if (Given.Contains(port) || !Bindable(port)) continue;
                Given.Add(port);
                return port;
            }
        }
        throw new InvalidOperationException($"no free port in {Range.Low}-{Range.High}");
    }

    private static bool Bindable(int port)
    {
        try
        {
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            socket.Bind(new IPEndPoint(IPAddress.Any, port));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    /// <summary>From 10000 up to the start of the ephemeral range (/proc/sys/net/ipv4/ip_local_port_range).</summary>
    private static (int, int) FreeRange()
    {
        try
        {
            var fields = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[])['\t', ' ', '\n'], StringSplitOptions.RemoveEmptyEntries);
            int low = int.Parse(fields[0]), high = int.Parse(fields[1]);
            if (low > 12000) return (10000, low);
            if (high < 60000) return (high + 1, 65535);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException) { }
        return (10000, 32768);
    }
}
