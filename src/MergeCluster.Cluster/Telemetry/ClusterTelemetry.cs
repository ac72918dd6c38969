using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using MergeCluster.Cluster.Grains;
using MergeCluster.Cluster.Silo;
using MergeCluster.Engine.Telemetry;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace MergeCluster.Cluster.Telemetry;

/// <summary>
/// The job grains active on this silo, for the gauges of pending and running tasks. Summed over all silos they
/// are the cluster's totals (every job has one active grain); an autoscaler reads the sum.
/// </summary>
internal sealed class JobGauges
{
    private readonly Lock _lock = new();
    private readonly HashSet<JobGrain> _jobs = [];

    public void Track(JobGrain job) { lock (_lock) _jobs.Add(job); }

    public void Untrack(JobGrain job) { lock (_lock) _jobs.Remove(job); }

    /// <summary>Counts read off the grains without their scheduler: a gauge may see a count one report old.</summary>
    public (int Pending, int Running) Totals()
    {
        int pending = 0, running = 0;
        lock (_lock)
        {
            foreach (var job in _jobs)
            {
                var counts = job.Counts();
                pending += counts.Pending;
                running += counts.Running;
            }
        }
        return (pending, running);
    }
}

/// <summary>
/// OpenTelemetry on silos and clients through the Generic Host: our source and meter, Orleans' sources (the grain
/// call spans that carry a job's trace from submit through the job grain to every task) and the "Microsoft.Orleans"
/// meter, exported over OTLP when the standard OTEL_* variables name an endpoint (the exporter reads them itself),
/// and on a silo's HTTP port as Prometheus text.
/// </summary>
public static class ClusterTelemetry
{
    /// <summary>Orleans' activity sources: application grain calls, and the runtime's.</summary>
    public static readonly string[] OrleansSources = ["Microsoft.Orleans.Application", "Microsoft.Orleans.Runtime"];
    public const string OrleansMeter = "Microsoft.Orleans";

    /// <summary>
    /// The autoscaler's gauges, named so that the Prometheus exporter's translation (dots to underscores, a unit in
    /// braces dropped, no suffix on a gauge) gives exactly <c>mergecluster_tasks_pending</c> and <c>_running</c>.
    /// </summary>
    public const string PendingTasksGauge = "mergecluster.tasks.pending", RunningTasksGauge = "mergecluster.tasks.running";

    /// <param name="prometheus">
    /// Keep the meters for a Prometheus scrape (a silo with --http-port maps the endpoint). That was asked for on the
    /// command line, so OTEL_SDK_DISABLED, which turns off OTLP export, leaves it on.
    /// </param>
    public static void AddClusterTelemetry(this IHostApplicationBuilder builder, string instance, bool prometheus = false)
    {
        static bool Set(string name) => !string.IsNullOrWhiteSpace(Environment.GetEnvironmentVariable(name));
        bool otlp = !string.Equals(Environment.GetEnvironmentVariable("OTEL_SDK_DISABLED"), "true", StringComparison.OrdinalIgnoreCase);
        bool traces = otlp && (Set("OTEL_EXPORTER_OTLP_ENDPOINT") || Set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
        bool metrics = otlp && (Set("OTEL_EXPORTER_OTLP_ENDPOINT") || Set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"));
        if (!traces && !metrics && !prometheus) return;
        // The exporter reads OTEL_* through the host's configuration, which a host built without defaults lacks.
        if (traces || metrics) builder.Configuration.AddEnvironmentVariables();
        var otel = builder.Services.AddOpenTelemetry().ConfigureResource(r => r.AddService("mergecluster", serviceInstanceId: instance));
        if (traces) otel.WithTracing(t => t.AddSource(MergeTelemetry.Name).AddSource(OrleansSources).AddOtlpExporter());
        if (metrics || prometheus)
        {
            otel.WithMetrics(m =>
            {
                m.AddMeter(MergeTelemetry.Name, OrleansMeter);
                if (metrics) m.AddOtlpExporter();
                if (prometheus) AddPrometheus(m);
            });
        }
    }

    /// <summary>Its own method, so that the exporter's assembly (and ASP.NET Core with it) loads only when it is used.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void AddPrometheus(MeterProviderBuilder metrics) => metrics.AddPrometheusExporter();

    /// <summary>The silo's gauges on the "MergeCluster" meter; see docs/cluster.md for what each counts.</summary>
    internal static void AddSiloGauges(this IServiceCollection services) =>
        services.AddHostedService(sp => new GaugeRegistration(sp.GetRequiredService<IMeterFactory>(), sp.GetRequiredService<TaskSlots>(), sp.GetRequiredService<JobGauges>(), sp.GetRequiredService<SiloReadiness>()));

    /// <summary>The gauges live on a meter of this host's (named "MergeCluster" too), so in-process test silos each have their own.</summary>
    private sealed class GaugeRegistration(IMeterFactory meters, TaskSlots slots, JobGauges jobs, SiloReadiness readiness) : IHostedService
    {
        public Task StartAsync(CancellationToken cancellationToken)
        {
            var meter = meters.Create(MergeTelemetry.Name);
            meter.CreateObservableGauge(PendingTasksGauge, () => jobs.Totals().Pending, "{task}", "tasks waiting to be handed out, in the jobs whose grain is on this silo");
            meter.CreateObservableGauge(RunningTasksGauge, () => jobs.Totals().Running, "{task}", "tasks handed to shard grains, in the jobs whose grain is on this silo");
            meter.CreateObservableGauge("mergecluster.silo.tasks.queued", () => slots.Queued, "{task}", "tasks on this silo waiting for a slot");
            meter.CreateObservableGauge("mergecluster.silo.tasks.running", () => slots.Running, "{task}", "tasks running on this silo");
            meter.CreateObservableGauge("mergecluster.silo.slots", () => slots.Threads, "{slot}", "task slots of this silo (--threads)");
            meter.CreateObservableGauge("mergecluster.silo.ready", () => readiness.IsReady ? 1 : 0, "{silo}", "1 while this silo has joined the cluster and takes work");
            return Task.CompletedTask;
        }

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
