using MergeCluster.Cluster.Contracts;

namespace MergeCluster.Cluster.Grains;

/// <summary>A task's state in the job grain's record.</summary>
internal enum TaskState : byte { Pending = 0, Running = 1, Done = 2, Failed = 3 }

/// <summary>
/// The job grain's persisted state (one blob per job): the recipe and settings, the plan's digest and the files it
/// owns, and per task its state, attempts, last silo and error. The task graph itself is derived again from the plan
/// when a job resumes, so the record grows by a few bytes per task, not by the graph.
/// </summary>
[GenerateSerializer, Alias("mergecluster.JobRecord")]
internal sealed class JobRecord
{
    [Id(0)] public long Id { get; set; }
    [Id(1)] public JobSubmission? Submission { get; set; }
    [Id(2)] public JobPhase Phase { get; set; }
    [Id(3)] public string? Error { get; set; }
    [Id(4)] public DateTimeOffset? SubmittedAt { get; set; }
    [Id(5)] public DateTimeOffset? FinishedAt { get; set; }
    /// <summary>The resolved task shape (fused or tree).</summary>
    [Id(6)] public string? Shape { get; set; }
    /// <summary>The temporary output the plan created: job state, never derived from the id.</summary>
    [Id(7)] public string? TempOutput { get; set; }
    [Id(8)] public string? Scratch { get; set; }
    [Id(9)] public string? Output { get; set; }
    [Id(10)] public string? PlanDigest { get; set; }
    [Id(11)] public byte[] States { get; set; } = [];
    [Id(12)] public byte[] Attempts { get; set; } = [];
    [Id(13)] public Dictionary<int, string> Errors { get; set; } = [];
    /// <summary>Per task, the index in <see cref="SiloNames"/> of the silo that ran its latest attempt, or -1.</summary>
    [Id(14)] public short[] Silos { get; set; } = [];
    [Id(15)] public List<string> SiloNames { get; set; } = [];
    /// <summary>A failed or cancelled job's files are removed: the job is final.</summary>
    [Id(16)] public bool FilesRemoved { get; set; }
    [Id(17)] public long BytesRead { get; set; }
    [Id(18)] public long BytesWritten { get; set; }
    /// <summary>Writes of this record to storage so far, this one included.</summary>
    [Id(19)] public int Writes { get; set; }
    /// <summary>The temporary output's identity ("device:inode:birth"): silos open it only while it is still that file.</summary>
    [Id(20)] public string? TempIdentity { get; set; }
    /// <summary>A sweep's temporary outputs, one per candidate in candidate order (a merge's is <see cref="TempOutput"/>).</summary>
    [Id(21)] public List<JobFile> Candidates { get; set; } = [];

    public bool Planned => PlanDigest is not null;

    /// <summary>A job that still needs its grain: not yet succeeded, and not failed or cancelled with its files removed.</summary>
    public bool Active => SubmittedAt is not null && Phase switch
    {
        JobPhase.Succeeded => false,
        JobPhase.Failed or JobPhase.Cancelled => !FilesRemoved,
        _ => true,
    };

    public JobRecord Clone()
    {
        var copy = (JobRecord)MemberwiseClone();
        copy.States = (byte[])States.Clone();
        copy.Attempts = (byte[])Attempts.Clone();
        copy.Errors = new Dictionary<int, string>(Errors);
        copy.Silos = (short[])Silos.Clone();
        copy.SiloNames = [.. SiloNames];
        copy.Candidates = [.. Candidates];
        return copy;
    }
}
