using System.Collections.Immutable;
using MergeCluster.Cluster.Contracts;
using MergeCluster.Cluster.Silo;
using MergeCluster.Cluster.Telemetry;
using MergeCluster.Merge;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Configuration;

namespace MergeCluster.Cluster.Client;

/// <summary>Which cluster a client talks to: the storage its silos share, and their cluster and service ids.</summary>
public sealed record ClientSettings(StorageConnection Storage, string ClusterId = ClusterNames.DefaultClusterId, string ServiceId = ClusterNames.DefaultServiceId);

/// <summary>
/// An Orleans client of the cluster, for <c>submit</c>, <c>status</c> and <c>cancel</c>: it finds the gateways in
/// the same Table storage the silos register in, and carries the caller's trace into the grains.
/// </summary>
public sealed class ClusterConnection : IAsyncDisposable
{
    /// <summary>How long a client keeps trying to reach a gateway (silos may be starting) before it gives up.</summary>
    public static readonly TimeSpan ConnectFor = TimeSpan.FromSeconds(20);

    private readonly IHost _host;

    private ClusterConnection(IHost host, ClientSettings settings)
    {
        _host = host;
        Settings = settings;
        Client = host.Services.GetRequiredService<IClusterClient>();
    }

    public ClientSettings Settings { get; }
    public IClusterClient Client { get; }

    public static async Task<ClusterConnection> ConnectAsync(ClientSettings settings, string instance, CancellationToken ct)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.ClearProviders();
        builder.AddClusterTelemetry(instance);
        var started = DateTime.UtcNow;
        builder.UseOrleansClient(client =>
        {
            client.Configure<ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (settings.ClusterId, settings.ServiceId));
            client.UseAzureStorageClustering(o => o.TableServiceClient = settings.Storage.Tables());
            client.AddActivityPropagation();
            client.UseConnectionRetryFilter(async (_, token) =>
            {
                if (DateTime.UtcNow - started > ConnectFor) return false;
                await Task.Delay(500, token);
                return true;
            });
        });
        var host = builder.Build();
        try
        {
            await host.StartAsync(ct);
        }
        catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            host.Dispose();
            throw new MergeException($"cluster {settings.ClusterId}: no silo reachable through storage {settings.Storage.Display}: {settings.Storage.Scrub(ErrorText.Innermost(e))}");
        }
        return new ClusterConnection(host, settings);
    }

    public Task<long> SubmitAsync(JobSubmission submission) => Client.GetGrain<IJobRegistryGrain>(0).Submit(submission);

    /// <summary>A job's status; <see cref="MergeException"/> when there is no such job.</summary>
    public async Task<JobStatus> StatusAsync(long job)
    {
        var status = await Client.GetGrain<IJobGrain>(job).GetStatus();
        return status.Exists ? status : throw new MergeException($"job {job}: no such job");
    }

    public Task<bool> CancelAsync(long job) => Client.GetGrain<IJobGrain>(job).Cancel();

    public Task<ImmutableArray<long>> RecentJobsAsync(int limit) => Client.GetGrain<IJobRegistryGrain>(0).Recent(limit);

    public Task<ImmutableArray<SiloInfo>> SilosAsync() => Client.GetGrain<IClusterGrain>(0).Silos();


    public async ValueTask DisposeAsync()
    {
        try
        {
            await _host.StopAsync(TimeSpan.FromSeconds(5));
        }
        finally
        {
            _host.Dispose();
        }
    }
}
