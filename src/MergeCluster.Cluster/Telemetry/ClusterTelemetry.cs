using System.Diagnostics.Metrics;
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
/// meter, exported over OTLP when the standard OTEL_* variables name an endpoint (the exporter reads them itself).
/// </summary>
public static class ClusterTelemetry
{
    /// <summary>Orleans' activity sources: application grain calls, and the runtime's.</summary>
    public static readonly string[] OrleansSources = ["Microsoft.Orleans.Application", "Microsoft.Orleans.Runtime"];
    public const string OrleansMeter = "Microsoft.Orleans";

    public static void AddClusterTelemetry(this IHostApplicationBuilder builder, string instance)
    {
        static bool Set(string name) => !string.IsNullOrWhiteSpace(Environment.GetEnvironmentVariable(name));
        if (string.Equals(Environment.GetEnvironmentVariable("OTEL_SDK_DISABLED"), "true", StringComparison.OrdinalIgnoreCase)) return;
        bool traces = Set("OTEL_EXPORTER_OTLP_ENDPOINT") || Set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        bool metrics = Set("OTEL_EXPORTER_OTLP_ENDPOINT") || Set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
        if (!traces && !metrics) return;
        // The exporter reads OTEL_* through the host's configuration, which a host built without defaults lacks.
        builder.Configuration.AddEnvironmentVariables();
        var otel = builder.Services.AddOpenTelemetry().ConfigureResource(r => r.AddService("mergecluster", serviceInstanceId: instance));
        if (traces) otel.WithTracing(t => t.AddSource(MergeTelemetry.Name).AddSource(OrleansSources).AddOtlpExporter());
        if (metrics) otel.WithMetrics(m => m.AddMeter(MergeTelemetry.Name, OrleansMeter).AddOtlpExporter());
    }

    /// <summary>The silo's gauges on the "MergeCluster" meter; see docs/cluster.md for what each counts.</summary>
    internal static void AddSiloGauges(this IServiceCollection services) =>
        services.AddHostedService(sp => new GaugeRegistration(sp.GetRequiredService<IMeterFactory>(), sp.GetRequiredService<TaskSlots>(), sp.GetRequiredService<JobGauges>(), sp.GetRequiredService<SiloReadiness>()));

    /// <summary>The gauges live on a meter of this host's (named "MergeCluster" too), so in-process test silos each have their own.</summary>
    private sealed class GaugeRegistration(IMeterFactory meters, TaskSlots slots, JobGauges jobs, SiloReadiness readiness) : IHostedService
    {
        public Task StartAsync(CancellationToken cancellationToken)
        {
            var meter = meters.Create(MergeTelemetry.Name);
            meter.CreateObservableGauge("mergecluster.jobs.tasks.pending", () => jobs.Totals().Pending, "{task}", "tasks waiting to be handed out, in the jobs whose grain is on this silo");
            meter.CreateObservableGauge("mergecluster.jobs.tasks.running", () => jobs.Totals().Running, "{task}", "tasks handed to shard grains, in the jobs whose grain is on this silo");
            meter.CreateObservableGauge("mergecluster.silo.tasks.queued", () => slots.Queued, "{task}", "tasks on this silo waiting for a slot");
            meter.CreateObservableGauge("mergecluster.silo.tasks.running", () => slots.Running, "{task}", "tasks running on this silo");
            meter.CreateObservableGauge("mergecluster.silo.slots", () => slots.Threads, "{slot}", "task slots of this silo (--threads)");
            meter.CreateObservableGauge("mergecluster.silo.ready", () => readiness.IsReady ? 1 : 0, "{silo}", "1 while this silo has joined the cluster and takes work");
            return Task.CompletedTask;
        }

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
