using MergeCluster.Engine.Telemetry;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace MergeCluster.Cluster.Telemetry;

/// <summary>
/// Exports the "MergeCluster" spans and metrics over OTLP when the standard OTEL_* variables ask for it
/// (OTEL_EXPORTER_OTLP_ENDPOINT or a per-signal endpoint); the exporter reads protocol, headers and the rest itself.
/// </summary>
public static class TelemetryExport
{
    /// <summary>Starts the providers, or returns null when no OTLP endpoint is configured or OTEL_SDK_DISABLED is true.</summary>
    public static IDisposable? Start(string instance)
    {
        static bool Set(string name) => !string.IsNullOrWhiteSpace(Environment.GetEnvironmentVariable(name));
        if (string.Equals(Environment.GetEnvironmentVariable("OTEL_SDK_DISABLED"), "true", StringComparison.OrdinalIgnoreCase)) return null;
        bool traces = Set("OTEL_EXPORTER_OTLP_ENDPOINT") || Set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        bool metrics = Set("OTEL_EXPORTER_OTLP_ENDPOINT") || Set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
        if (!traces && !metrics) return null;

        var resource = ResourceBuilder.CreateDefault().AddService("mergecluster", serviceInstanceId: instance);
        var tracer = traces ? Sdk.CreateTracerProviderBuilder().SetResourceBuilder(resource).AddSource(MergeTelemetry.Name).AddOtlpExporter().Build() : null;
        var meter = metrics ? Sdk.CreateMeterProviderBuilder().SetResourceBuilder(resource).AddMeter(MergeTelemetry.Name).AddOtlpExporter().Build() : null;
        return new Providers(tracer, meter);
    }

    /// <summary>Disposing flushes what is still buffered, so a silo's last spans leave with it.</summary>
    private sealed class Providers(TracerProvider? tracer, MeterProvider? meter) : IDisposable
    {
        public void Dispose()
        {
            tracer?.Dispose();
            meter?.Dispose();
        }
    }
}
