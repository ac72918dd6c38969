using System.Collections.Concurrent;
using System.Net;
using System.Text;
using MergeCluster.Cluster.Tests.Infrastructure;
using MergeCluster.Engine.Ledger;
using Xunit.Abstractions;

namespace MergeCluster.Cluster.Tests;

/// <summary>A silo process exports its spans and metrics over OTLP when the standard OTEL_* variables say where.</summary>
public sealed class OtlpExportTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_silo_exports_task_spans_and_metrics_to_the_configured_otlp_endpoint()
    {
        var received = new ConcurrentQueue<(string Path, byte[] Body)>();
        int port = PostgresServer.FreePort();
        using var collector = new HttpListener();
        collector.Prefixes.Add($"http://127.0.0.1:{port}/");
        collector.Start();
        var serving = Task.Run(async () =>
        {
            while (collector.IsListening)
            {
                HttpListenerContext context;
                try
                {
                    context = await collector.GetContextAsync();
                }
                catch (Exception) when (!collector.IsListening)
                {
                    return;
                }
                using var body = new MemoryStream();
                await context.Request.InputStream.CopyToAsync(body);
                received.Enqueue((context.Request.Url!.AbsolutePath, body.ToArray()));
                context.Response.StatusCode = 200;
                context.Response.Close();
            }
        });

        await using var cluster = await ClusterFixture.CreateAsync(output);
        var otel = new Dictionary<string, string>
        {
            ["OTEL_EXPORTER_OTLP_ENDPOINT"] = $"http://127.0.0.1:{port}",
            ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf",
            ["OTEL_BSP_SCHEDULE_DELAY"] = "100",
            ["OTEL_METRIC_EXPORT_INTERVAL"] = "200",
        };
        var silo = await cluster.StartSiloAsync("otel-silo", otel, "--engine", "test", "--threads", "1", "--lease", "2");
        long id = await cluster.SubmitAsync(cluster.WriteRecipe("output = out.bin\nleaves = 2\n"));
        Assert.Equal(JobState.Succeeded, (await cluster.WaitForJobEndAsync(id)).State);
        silo.Terminate(); // draining flushes what the exporters still hold
        Assert.Equal(0, await silo.WaitForExitAsync());
        collector.Stop();
        await serving;

        // OTLP protobuf carries names and string attributes as plain UTF-8, so they can be looked for in the bodies.
        string Bodies(string path) => string.Join('\n', received.Where(r => r.Path == path).Select(r => Encoding.UTF8.GetString(r.Body)));
        var traces = Bodies("/v1/traces");
        Assert.Contains("mergecluster.task", traces);
        Assert.Contains("mergecluster.plan", traces);
        Assert.Contains("otel-silo", traces);
        Assert.Contains("mergecluster.tasks", Bodies("/v1/metrics"));
    }
}
