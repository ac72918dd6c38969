using System.Collections.Immutable;
using MergeCluster.Engine.Execution;
using Microsoft.Extensions.Logging;
using Orleans.Runtime.MembershipService.SiloMetadata;

namespace MergeCluster.Cluster.Silo;

/// <summary>What one silo is: its name, its task slots, the roots it may open files under and the models it holds.</summary>
public sealed record SiloIdentity(string Name, int Threads, DataRoots Roots, ImmutableSortedSet<string> Models)
{
    /// <summary>Metadata keys every silo announces to the cluster (Orleans silo metadata).</summary>
    public const string NameKey = "mergecluster.name", ThreadsKey = "mergecluster.threads", ModelsKey = "mergecluster.models";

    /// <summary>The file names of the checkpoints under the data roots: what leaf tasks may be placed near.</summary>
    public static ImmutableSortedSet<string> ScanModels(DataRoots roots)
    {
        var scan = new EnumerationOptions { RecurseSubdirectories = true, IgnoreInaccessible = true, MaxRecursionDepth = 8 };
        return roots.Roots.SelectMany(r => Directory.EnumerateFiles(r, "*.safetensors", scan)).Select(Path.GetFileName).OfType<string>()
            .ToImmutableSortedSet(StringComparer.Ordinal);
    }

    public Dictionary<string, string> Metadata() => new()
    {
        [NameKey] = Name,
        [ThreadsKey] = Threads.ToString(System.Globalization.CultureInfo.InvariantCulture),
        [ModelsKey] = string.Join('\n', Models),
    };

    public JobEnvironment Environment => new(path => Roots.Resolve(path), Threads);
}

/// <summary>A live silo as a job grain schedules on it: its address, name, task slots and the model files it announced.</summary>
internal sealed record LiveSilo(SiloAddress Address, string Name, int Threads, IReadOnlySet<string> Models)
{
    public static IReadOnlyList<LiveSilo> All(IClusterMembershipService membership, ISiloMetadataCache metadata)
    {
        var silos = new List<LiveSilo>();
        foreach (var member in membership.CurrentSnapshot.Members.Values)
        {
            if (member.Status != SiloStatus.Active) continue;
            var meta = metadata.GetSiloMetadata(member.SiloAddress).Metadata;
            if (!meta.TryGetValue(SiloIdentity.ThreadsKey, out var t) || !int.TryParse(t, out int threads) || threads < 1) continue;
            var models = meta.TryGetValue(SiloIdentity.ModelsKey, out var m) && m.Length > 0 ? m.Split('\n').ToHashSet(StringComparer.Ordinal) : [];
            silos.Add(new LiveSilo(member.SiloAddress, meta.GetValueOrDefault(SiloIdentity.NameKey) ?? member.Name, threads, models));
        }
        silos.Sort((a, b) => string.CompareOrdinal(a.Name, b.Name));
        return silos;
    }
}

/// <summary>
/// The silo's task slots (<c>--threads</c>): a shard grain holds one while its task computes; tasks beyond them
/// wait. Queued and running counts are what this silo's gauges and readiness report.
/// </summary>
public sealed class TaskSlots(int threads)
{
    private readonly SemaphoreSlim _slots = new(threads, threads);
    private int _queued, _running;

    public int Threads { get; } = threads;
    public int Queued => Volatile.Read(ref _queued);
    public int Running => Volatile.Read(ref _running);

    public async Task<IDisposable> AcquireAsync(CancellationToken ct)
    {
        Interlocked.Increment(ref _queued);
        try
        {
            await _slots.WaitAsync(ct);
        }
        finally
        {
            Interlocked.Decrement(ref _queued);
        }
        Interlocked.Increment(ref _running);
        return new Slot(this);
    }

    private sealed class Slot(TaskSlots slots) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) != 0) return;
            Interlocked.Decrement(ref slots._running);
            slots._slots.Release();
        }
    }
}

/// <summary>
/// Whether this silo has joined the cluster and takes work: what the log line tests wait for says, and what an HTTP
/// readiness probe and the gauges read.
/// </summary>
public sealed partial class SiloReadiness(SiloIdentity identity, StorageConnection storage, ILocalSiloDetails local, ILogger<SiloReadiness> log)
    : ILifecycleParticipant<ISiloLifecycle>
{
    private volatile bool _ready;

    public bool IsReady => _ready;

    public void Participate(ISiloLifecycle lifecycle) =>
        lifecycle.Subscribe(nameof(SiloReadiness), ServiceLifecycleStage.Active, OnStart, OnStop);

    private Task OnStart(CancellationToken ct)
    {
        _ready = true;
        LogReady(log, identity.Name, local.ClusterId, local.SiloAddress.ToString(), identity.Threads, identity.Models.Count, string.Join(", ", identity.Roots.Roots), storage.Display);
        return Task.CompletedTask;
    }

    private Task OnStop(CancellationToken ct)
    {
        _ready = false;
        LogDraining(log, identity.Name);
        return Task.CompletedTask;
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "silo {Silo}: joined cluster {Cluster} at {Address} and is ready: {Threads} task slot(s), {Models} model(s) under {Roots}; storage {Storage}")]
    private static partial void LogReady(ILogger logger, string silo, string cluster, string address, int threads, int models, string roots, string storage);

    [LoggerMessage(Level = LogLevel.Information, Message = "silo {Silo}: draining (running tasks finish or are handed back)")]
    private static partial void LogDraining(ILogger logger, string silo);
}
