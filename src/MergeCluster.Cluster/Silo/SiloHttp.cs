using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using Orleans.Dashboard;

namespace MergeCluster.Cluster.Silo;

/// <summary>
/// The silo's HTTP endpoint (<c>--http-port</c>) on Kestrel: <c>/healthz</c> answers as soon as the process listens,
/// while the silo is still joining and while it drains; <c>/readyz</c> answers 200 only while the silo has joined and
/// takes work (<see cref="SiloReadiness"/>), 503 before and once the drain begins; <c>/metrics</c> is the
/// OpenTelemetry Prometheus exporter over the MergeCluster and Microsoft.Orleans meters; with <c>--dashboard</c>, the
/// Orleans Dashboard is under <c>/dashboard/</c>.
/// </summary>
public static class SiloHttp
{
    public const string Liveness = "/healthz", Readiness = "/readyz", Metrics = "/metrics", Dashboard = "/dashboard";

    private const string ReadyTag = "ready";

    /// <summary>
    /// The silo's host as a web host: <paramref name="configure"/> as for any silo host, then the silo itself
    /// (<paramref name="addSilo"/>) in a container callback. Those run after the web host registers its own hosted
    /// service, so the silo starts after Kestrel listens and stops before Kestrel does: /healthz answers while the silo
    /// joins, and /readyz says 503 while it drains.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal static IHost Build(int port, bool dashboard, Action<IHostApplicationBuilder> configure, Action<IServiceCollection> addSilo)
    {
        // Nothing but Kestrel on every address, routing and the health checks: no configuration sources, no
        // ASPNETCORE_* ports or URLs, no logging providers of its own.
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions());
        builder.WebHost.UseKestrelCore().ConfigureKestrel(o =>
        {
            o.ListenAnyIP(port);
            o.AddServerHeader = false;
        });
        builder.Services.AddRoutingCore();
        builder.Services.AddHealthChecks().AddCheck<ReadinessCheck>("silo", tags: [ReadyTag]);
        configure(builder);
        builder.Host.ConfigureContainer<IServiceCollection>((_, services) => addSilo(services));

        var app = builder.Build();
        app.MapHealthChecks(Liveness, new HealthCheckOptions { Predicate = _ => false, ResponseWriter = (c, _) => c.Response.WriteAsync("alive\n") });
        app.MapHealthChecks(Readiness, new HealthCheckOptions { Predicate = c => c.Tags.Contains(ReadyTag), ResponseWriter = WriteDescriptions });
        app.MapPrometheusScrapingEndpoint(Metrics);
        if (dashboard) app.MapOrleansDashboard(Dashboard);
        return app;
    }

    /// <summary>The Orleans Dashboard's silo services; its log stream stays off (it would show every log line to anyone who reaches the port).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal static void AddDashboard(ISiloBuilder silo) => silo.AddDashboard(o => o.HideTrace = true);

    /// <summary>True when <paramref name="e"/> is Kestrel failing to bind because another process holds the port.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static bool IsPortInUse(Exception e) => e is IOException { InnerException: AddressInUseException };

    private static Task WriteDescriptions(HttpContext context, HealthReport report) =>
        context.Response.WriteAsync(string.Concat(report.Entries.Values.Select(e => e.Description + "\n")));

    /// <summary>The readiness probe: healthy exactly while <see cref="SiloReadiness.IsReady"/>.</summary>
    private sealed class ReadinessCheck(SiloReadiness readiness) : IHealthCheck
    {
        public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
            Task.FromResult(readiness.IsReady ? HealthCheckResult.Healthy(readiness.State) : HealthCheckResult.Unhealthy(readiness.State));
    }
}
