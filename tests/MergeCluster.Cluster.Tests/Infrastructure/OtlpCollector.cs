using System.Collections.Concurrent;
using System.Net;
using System.Text;

namespace MergeCluster.Cluster.Tests.Infrastructure;

/// <summary>An OTLP/HTTP endpoint on 127.0.0.1 that keeps every request body; protobuf carries names and strings as plain UTF-8.</summary>
public sealed class OtlpCollector : IAsyncDisposable
{
    private readonly HttpListener _listener = new();
    private readonly ConcurrentQueue<(string Path, byte[] Body)> _received = new();
    private readonly Task _serving;

    public OtlpCollector()
    {
        Port = ClusterFixture.FreePort();
        _listener.Prefixes.Add($"http://127.0.0.1:{Port}/");
        _listener.Start();
        _serving = Task.Run(ServeAsync);
    }

    public int Port { get; }

    /// <summary>The standard variables that send a process's spans and metrics here, quickly.</summary>
    public Dictionary<string, string> Environment => new()
    {
        ["OTEL_EXPORTER_OTLP_ENDPOINT"] = $"http://127.0.0.1:{Port}",
        ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf",
        ["OTEL_BSP_SCHEDULE_DELAY"] = "100",
        ["OTEL_METRIC_EXPORT_INTERVAL"] = "200",
    };

    /// <summary>Every body received on a path (/v1/traces, /v1/metrics), as text.</summary>
    public string Bodies(string path) => string.Join('\n', _received.Where(r => r.Path == path).Select(r => Encoding.UTF8.GetString(r.Body)));

    public string All => string.Join('\n', _received.Select(r => Encoding.UTF8.GetString(r.Body)));

    private async Task ServeAsync()
    {
        while (_listener.IsListening)
        {
            try
            {
                var context = await _listener.GetContextAsync();
                using var body = new MemoryStream();
                await context.Request.InputStream.CopyToAsync(body);
                _received.Enqueue((context.Request.Url!.AbsolutePath, body.ToArray()));
                context.Response.StatusCode = 200;
                context.Response.Close();
            }
            catch (Exception e) when (e is ObjectDisposedException or HttpListenerException or InvalidOperationException or IOException)
            {
                if (!_listener.IsListening) return;
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        _listener.Stop();
        await _serving;
        _listener.Close();
    }
}
