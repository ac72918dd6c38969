using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using MergeCluster.Cluster.Grains;
using MergeCluster.Cluster.Telemetry;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using Microsoft.Extensions.Options;
using Orleans.Configuration;
using Orleans.Runtime.MembershipService.SiloMetadata;
using Orleans.Storage;

namespace MergeCluster.Cluster.Silo;

/// <summary>What <c>mergecluster silo</c> was asked to run as (the silo contract's options).</summary>
public sealed record SiloSettings
{
    public required StorageConnection Storage { get; init; }
    public required IReadOnlyList<string> DataRoots { get; init; }
    public string? Name { get; init; }
    public int Threads { get; init; } = Environment.ProcessorCount;
    public int SiloPort { get; init; } = 11111;
    public int GatewayPort { get; init; } = 30000;
    public string ClusterId { get; init; } = ClusterNames.DefaultClusterId;
    public string ServiceId { get; init; } = ClusterNames.DefaultServiceId;
    public IPAddress? AdvertisedIp { get; init; }
}

/// <summary>The defaults the silo and its clients share.</summary>
public static class ClusterNames
{
    public const string DefaultClusterId = "mergecluster", DefaultServiceId = "mergecluster";
}

/// <summary>
/// The silo process: the Generic Host with Orleans on Azure Storage (Table clustering and reminders, Blob grain
/// state), the cluster's grains and silo services, OpenTelemetry and console logging. Thin on purpose: the work is in
/// the grains; an HTTP endpoint (health, readiness from <see cref="SiloReadiness"/>, metrics) can be added to the
/// same builder.
/// </summary>
public static class SiloHost
{
    /// <summary>The grain storage provider's name; its blob container is named after the service id.</summary>
    public const string StorageName = "mergecluster";

    /// <summary>Builds the host; <paramref name="configure"/> may add to it (Kestrel, for instance) before it is built.</summary>
    public static IHost Build(SiloSettings settings, Action<HostApplicationBuilder>? configure = null)
    {
        var roots = new DataRoots(settings.DataRoots);
        if (settings.Threads < 1) throw new Merge.MergeException("--threads: a silo needs at least one task slot");
        var name = string.IsNullOrWhiteSpace(settings.Name) ? $"{Environment.MachineName}-{Environment.ProcessId}" : settings.Name;
        var identity = new SiloIdentity(name, settings.Threads, roots, SiloIdentity.ScanModels(roots));
        var advertised = settings.AdvertisedIp ?? DefaultAdvertisedIp();

        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        ConfigureLogging(builder.Logging);
        // Kubernetes' terminationGracePeriodSeconds defaults to 30 s: a drain of up to ShardGrain.DrainGrace fits in it.
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(28));
        builder.AddClusterTelemetry(name);
        builder.UseOrleans(silo =>
        {
            silo.Configure<ClusterOptions>(o => (o.ClusterId, o.ServiceId) = (settings.ClusterId, settings.ServiceId));
            silo.Configure<SiloOptions>(o => o.SiloName = name);
            silo.ConfigureEndpoints(advertised, settings.SiloPort, settings.GatewayPort, listenOnAnyHostAddress: true);
            silo.UseAzureStorageClustering(o => o.TableServiceClient = settings.Storage.Tables());
            AddMergeCluster(silo, settings.Storage, identity);
        });
        configure?.Invoke(builder);
        return builder.Build();
    }

    /// <summary>
    /// Everything of a MergeCluster silo except clustering and endpoints (which in-process test clusters bring
    /// themselves): grain state on Blob storage, reminders on Table storage, silo metadata, placement, services.
    /// </summary>
    public static void AddMergeCluster(ISiloBuilder silo, StorageConnection storage, SiloIdentity identity)
    {
        silo.AddAzureBlobGrainStorage(StorageName, (OptionsBuilder<AzureBlobStorageOptions> options) => options.Configure<IServiceProvider, IOptions<ClusterOptions>>((o, services, cluster) =>
        {
            o.BlobServiceClient = storage.Blobs();
            o.ContainerName = ContainerName(cluster.Value.ServiceId);
            o.GrainStorageSerializer = new OrleansGrainStorageSerializer(services.GetRequiredService<Orleans.Serialization.Serializer>());
        }));
        silo.UseAzureTableReminderService(o => o.TableServiceClient = storage.Tables());
        silo.UseSiloMetadata(identity.Metadata());
        silo.AddActivityPropagation();
        silo.AddPlacementDirector<ModelLocalityPlacement, ModelLocalityPlacementDirector>();
        silo.Services.AddSingleton(identity);
        silo.Services.AddSingleton(storage);
        silo.Services.AddSingleton(TimeProvider.System);
        silo.Services.AddSingleton(new TaskSlots(identity.Threads));
        silo.Services.AddSingleton<OpenJobs>();
        silo.Services.AddSingleton<JobGauges>();
        silo.Services.AddSingleton<SiloReadiness>();
        silo.Services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>>(sp => sp.GetRequiredService<SiloReadiness>());
        silo.Services.AddSiloGauges();
    }

    /// <summary>Blob container names allow lowercase letters, digits and dashes, 3-63 of them.</summary>
    internal static string ContainerName(string serviceId)
    {
        var chars = serviceId.ToLowerInvariant().Select(c => char.IsAsciiLetterOrDigit(c) ? c : '-').ToArray();
        var name = ("mc-" + new string(chars)).Trim('-');
        while (name.Contains("--", StringComparison.Ordinal)) name = name.Replace("--", "-", StringComparison.Ordinal);
        return name.Length > 63 ? name[..63].TrimEnd('-') : name;
    }

    /// <summary>One line per event with a time: our messages at Information, Orleans' and Azure's warnings and errors.</summary>
    public static void ConfigureLogging(ILoggingBuilder logging)
    {
        logging.ClearProviders();
        logging.AddConsole(o => o.FormatterName = LogLineFormatter.Name).AddConsoleFormatter<LogLineFormatter, ConsoleFormatterOptions>();
        logging.SetMinimumLevel(LogLevel.Warning);
        logging.AddFilter("MergeCluster", LogLevel.Information);
        logging.AddFilter("Microsoft.Hosting.Lifetime", LogLevel.Warning);
        // Startup notes (no server GC, a watchdog that measured the JIT) that are no fault of a silo.
        logging.AddFilter("Orleans.Runtime.Silo", LogLevel.Error);
        logging.AddFilter("Orleans.Runtime.Watchdog", LogLevel.Error);
    }

    /// <summary>The first up IPv4 address that is not loopback, else 127.0.0.1 (the contract's default).</summary>
    public static IPAddress DefaultAdvertisedIp()
    {
        foreach (var nic in NetworkInterface.GetAllNetworkInterfaces())
        {
            if (nic.OperationalStatus != OperationalStatus.Up || nic.NetworkInterfaceType == NetworkInterfaceType.Loopback) continue;
            foreach (var address in nic.GetIPProperties().UnicastAddresses)
                if (address.Address.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(address.Address)) return address.Address;
        }
        return IPAddress.Loopback;
    }
}
