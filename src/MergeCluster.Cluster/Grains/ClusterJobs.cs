using System.Collections.Immutable;
using MergeCluster.Cluster.Contracts;
using MergeCluster.Engine.Execution;
using MergeCluster.Engine.Selection;
using MergeCluster.Merge;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Recipes;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Cluster.Grains;

/// <summary>
/// The one place a submission becomes an engine job, by its kind: planned by the job grain, opened again by the job
/// grain after a resume and by every silo that runs a task. Whatever the kind, the job grain sees only its
/// <see cref="IShardedJob"/>: tasks, files, digest, assembly.
/// </summary>
internal static class ClusterJobs
{
    /// <summary>Plans the job and creates the files it owns (temporary outputs, scratch), named after <paramref name="id"/>.</summary>
    public static IShardedJob Plan(JobSubmission submission, JobEnvironment environment, IReadOnlyList<IReadOnlyCollection<string>> held, long id)
    {
        var options = submission.Settings.ToOptions();
        switch (submission.Kind)
        {
            case JobKinds.Merge:
                return MergeJob.Create(RecipeOf(submission), options, environment, held, clusterJob: id);
            case JobKinds.Distance:
                {
                    var s = submission.Selection!;
                    return DistanceJob.Create(DistancePlanOf(s, options, environment), Resolve(environment, s.OutputDirectory), id);
                }
            case JobKinds.Sweep:
                {
                    var s = submission.Selection!;
                    var (mode, component) = SweepOf(s);
                    return SweepJob.CreateForCluster(RecipeOf(submission), mode, component, s.OutputDirectory, options.HashInputs, options.ShardBytes,
                        environment.Resolve, Math.Max(1, environment.Threads), id);
                }
            default:
                throw new MergeException($"unknown job kind '{submission.Kind}'");
        }
    }

    /// <summary>Opens a job planned elsewhere from its recorded files; its plan must have <paramref name="digest"/>.</summary>
    public static IShardedJob Open(JobSubmission submission, string shape, ImmutableArray<OwnedTemp> temps, string? scratch, JobEnvironment environment, string digest)
    {
        var options = submission.Settings.ToOptions();
        switch (submission.Kind)
        {
            case JobKinds.Merge:
                return MergeJob.Open(RecipeOf(submission), options, Enum.Parse<TaskShape>(shape), new MergeJobFiles(temps[0].Path, scratch, temps[0].Identity), environment, digest);
            case JobKinds.Distance:
                {
                    var s = submission.Selection!;
                    return DistanceJob.Open(DistancePlanOf(s, options, environment), Resolve(environment, s.OutputDirectory),
                        scratch ?? throw new MergeException("a distance job without its scratch directory"), digest);
                }
            case JobKinds.Sweep:
                {
                    var s = submission.Selection!;
                    var (mode, component) = SweepOf(s);
                    return SweepJob.Open(RecipeOf(submission), mode, component, s.OutputDirectory, options.ShardBytes, environment.Resolve, temps, digest);
                }
            default:
                throw new MergeException($"unknown job kind '{submission.Kind}'");
        }
    }

    /// <summary>A job's temporary outputs as recorded: a merge's one, or a sweep's candidates.</summary>
    public static ImmutableArray<OwnedTemp> TempsOf(string? tempOutput, string? tempIdentity, IEnumerable<JobFile>? candidates)
    {
        if (!string.IsNullOrEmpty(tempOutput)) return [new OwnedTemp(tempOutput, IdentityOf(tempIdentity))];
        return candidates is null ? [] : [.. candidates.Select(c => new OwnedTemp(c.Path, IdentityOf(c.Identity)))];
    }

    /// <summary>A sweep's temporary outputs as they are recorded and travel (a merge records its one on its own).</summary>
    public static List<JobFile> CandidatesOf(IShardedJob job) =>
        job.Kind == JobKinds.Sweep ? [.. job.Temps.Select(t => new JobFile(t.Path, t.Identity.ToString()))] : [];

    private static FileIdentity IdentityOf(string? text) => FileIdentity.TryParse(text, out var identity) ? identity : default;

    private static Recipe RecipeOf(JobSubmission s) => Recipe.Parse(s.RecipeText, s.RecipeDirectory, s.RecipeSource);

    private static DistancePlan DistancePlanOf(SelectionSettings s, MergeJobOptions options, JobEnvironment environment) =>
        DistancePlan.Create([.. (s.Models ?? []).Select(m => Resolve(environment, m))], s.Base is null ? null : Resolve(environment, s.Base),
            DistancePlan.ParseComponents(s.Components), s.Blocks, options.ShardBytes);

    private static (SweepMode, Component) SweepOf(SelectionSettings s) =>
        (s.Mode switch
        {
            "leave-one-out" => SweepMode.LeaveOneOut,
            "swap" => SweepMode.Swap,
            _ => throw new MergeException($"unknown sweep mode '{s.Mode}' (expected leave-one-out or swap)"),
        }, Components.Parse(s.Component ?? throw new MergeException("a sweep names the component it varies")));

    /// <summary>An absolute path as this silo opens it (confined to its data roots).</summary>
    private static string Resolve(JobEnvironment environment, string path) =>
        environment.Resolve is { } resolve ? resolve(Path.GetFullPath(path)) : Path.GetFullPath(path);
}
