using Orleans.Placement;
using Orleans.Runtime.MembershipService.SiloMetadata;
using Orleans.Runtime.Placement;

namespace MergeCluster.Cluster.Silo;

/// <summary>
/// Places a shard grain on the silo its job grain chose (the placement hint); without a usable hint, on the silo
/// whose announced models cover most of the files the task reads (given in the request context); else at random.
/// </summary>
[GenerateSerializer, Immutable, SuppressReferenceTracking, Alias("mergecluster.ModelLocalityPlacement")]
public sealed class ModelLocalityPlacement : PlacementStrategy
{
    public static readonly ModelLocalityPlacement Instance = new();

    /// <summary>Request-context key of the task's model file names, newline-separated.</summary>
    public const string ModelsKey = "mergecluster.models";
}

/// <summary>Marks a grain class as placed by <see cref="ModelLocalityPlacement"/>.</summary>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class ModelLocalityPlacementAttribute() : PlacementAttribute(ModelLocalityPlacement.Instance);

internal sealed class ModelLocalityPlacementDirector(ISiloMetadataCache metadata) : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var silos = context.GetCompatibleSilos(target);
        if (IPlacementDirector.GetPlacementHint(target.RequestContextData, silos) is { } hint) return Task.FromResult(hint);
        if (target.RequestContextData is { } data && data.TryGetValue(ModelLocalityPlacement.ModelsKey, out var value) && value is string { Length: > 0 } files)
        {
            var wanted = files.Split('\n');
            SiloAddress? best = null;
            int bestCount = 0;
            foreach (var silo in silos)
            {
                var held = metadata.GetSiloMetadata(silo).Metadata.GetValueOrDefault(SiloIdentity.ModelsKey);
                if (held is null) continue;
                var set = held.Split('\n').ToHashSet(StringComparer.Ordinal);
                int count = wanted.Count(set.Contains);
                if (count > bestCount) (best, bestCount) = (silo, count);
            }
            if (best is not null) return Task.FromResult(best);
        }
        return Task.FromResult(silos[Random.Shared.Next(silos.Length)]);
    }
}
