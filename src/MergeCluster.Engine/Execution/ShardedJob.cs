using System.Collections.Immutable;
using MergeCluster.Safetensors;

namespace MergeCluster.Engine.Execution;

/// <summary>A temporary output a job created exclusively (see <see cref="OutputTemp"/>) and owns until it is committed or removed.</summary>
public readonly record struct OwnedTemp(string Path, FileIdentity Identity);

/// <summary>
/// A planned job of shard tasks, whatever it computes (a merge, a distance map, a sweep's candidates): the tasks and
/// their dependencies, the files it owns, a digest every machine that opens it must derive again, and the steps a
/// scheduler calls: run a task (<see cref="OpenRun"/>), release what a durably done task consumed, assemble once
/// every task is done. The embedded commands run the tasks on their threads, the cluster's job grain on shard grains.
/// </summary>
public interface IShardedJob : IDisposable
{
    /// <summary>"merge", "distance" or "sweep".</summary>
    string Kind { get; }
    IReadOnlyList<MergeTask> Tasks { get; }
    /// <summary>Identifies the plan: a machine whose plan has another digest sees other inputs and must not run its tasks.</summary>
    string Digest { get; }
    /// <summary>The resolved task shape (fused or tree).</summary>
    TaskShape Shape { get; }
    /// <summary>What the job produces: the output file, or the directory of a distance map or of a sweep's candidates.</summary>
    string OutputPath { get; }
    long InputBytes { get; }
    /// <summary>The temporary outputs the plan created (none for a distance map), in the order the job records them.</summary>
    ImmutableArray<OwnedTemp> Temps { get; }
    /// <summary>The directory of the job's intermediate files (partial sums, distance partials), if any.</summary>
    string? Scratch { get; }

    /// <summary>The file names of the models a task reads: what silos announce they hold.</summary>
    IEnumerable<string> FilesOf(MergeTask task);

    /// <summary>Maps the inputs and opens the outputs for running tasks on this machine.</summary>
    IShardedRun OpenRun(MergeProgress? progress = null);

    /// <summary>Deletes what a done task consumed; call it only once that task's being done is durable.</summary>
    void Release(MergeTask done);

    /// <summary>Once every task is done: verifies and commits the outputs (idempotent: a committed job stays as it is).</summary>
    void Assemble();
}

/// <summary>What one machine keeps open to run a job's tasks; thread-safe; dispose it when the machine has no more tasks of the job.</summary>
public interface IShardedRun : IDisposable
{
    IShardedJob Job { get; }

    /// <summary>
    /// Runs one task on the calling thread. Files it writes whole (partial sums) are durable when it returns; what it
    /// wrote into the job's outputs may still be in the page cache until <see cref="Flush"/>.
    /// </summary>
    TaskBytes Run(MergeTask task, int attempt, CancellationToken ct);

    /// <summary>
    /// Puts on disk what <see cref="Run"/> wrote of <paramref name="task"/> into the job's outputs, as a cluster needs
    /// before it records the task done on another machine. Apart from Run so that a silo can compute its next task
    /// while the disk takes this one.
    /// </summary>
    void Flush(MergeTask task);
}

/// <summary>Files a task writes whole: under a name of the attempt's own, fsynced, then renamed into place.</summary>
public static class ScratchFile
{
    /// <summary>
    /// Writes <paramref name="final"/> through a temporary file of this attempt's own, committed by rename: a dead
    /// attempt's bytes never reach a reader, and two runners of one task never write one file.
    /// </summary>
    public static void Write(string final, int attempt, Action<Stream> produce)
    {
        string temp = $"{final}.a{attempt}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                produce(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, final, overwrite: true);
        }
        catch
        {
            MergeJob.TryDelete(temp);
            throw;
        }
    }
}
