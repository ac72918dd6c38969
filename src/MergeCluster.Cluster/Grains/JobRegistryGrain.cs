using System.Collections.Immutable;
using MergeCluster.Cluster.Contracts;
using MergeCluster.Cluster.Silo;

namespace MergeCluster.Cluster.Grains;

/// <summary>The registry's persisted state: the last job id handed out and the most recent ids.</summary>
[GenerateSerializer, Alias("mergecluster.JobRegistryRecord")]
internal sealed class JobRegistryRecord
{
    [Id(0)] public long LastId { get; set; }
    [Id(1)] public List<long> Recent { get; set; } = [];
}

/// <summary>Hands out job ids (1, 2, 3, ...) durably and remembers the last <see cref="Keep"/> jobs for <c>status</c>.</summary>
internal sealed class JobRegistryGrain([PersistentState("jobs", SiloHost.StorageName)] IPersistentState<JobRegistryRecord> state) : Grain, IJobRegistryGrain
{
    private const int Keep = 200;

    public async Task<long> Submit(JobSubmission submission)
    {
        long id = state.State.LastId + 1;
        state.State.LastId = id;
        state.State.Recent.Insert(0, id);
        if (state.State.Recent.Count > Keep) state.State.Recent.RemoveRange(Keep, state.State.Recent.Count - Keep);
        await state.WriteStateAsync();
        await GrainFactory.GetGrain<IJobGrain>(id).Submit(submission);
        return id;
    }

    public Task<ImmutableArray<long>> Recent(int limit) => Task.FromResult(state.State.Recent.Take(limit).ToImmutableArray());
}

/// <summary>Answers from any silo with the members the cluster sees as active and what each announced.</summary>
[Orleans.Concurrency.StatelessWorker]
internal sealed class ClusterGrain(IClusterMembershipService membership, Orleans.Runtime.MembershipService.SiloMetadata.ISiloMetadataCache metadata) : Grain, IClusterGrain
{
    public Task<ImmutableArray<SiloInfo>> Silos()
    {
        var silos = ImmutableArray.CreateBuilder<SiloInfo>();
        foreach (var member in membership.CurrentSnapshot.Members.Values.Where(m => m.Status == SiloStatus.Active).OrderBy(m => m.Name, StringComparer.Ordinal))
        {
            var meta = metadata.GetSiloMetadata(member.SiloAddress).Metadata;
            int threads = int.TryParse(meta.GetValueOrDefault(SiloIdentity.ThreadsKey), out int t) ? t : 0;
            int models = meta.GetValueOrDefault(SiloIdentity.ModelsKey) is { Length: > 0 } m ? m.Split('\n').Length : 0;
            silos.Add(new SiloInfo(meta.GetValueOrDefault(SiloIdentity.NameKey) ?? member.Name, member.SiloAddress.ToString(), member.Status.ToString().ToLowerInvariant(), threads, models));
        }
        return Task.FromResult(silos.ToImmutable());
    }
}
