namespace MergeCluster.Engine.Runtime;

/// <summary>Lease, renewal, polling and drain timings of the runtime loops; seconds in production, fractions of one in tests.</summary>
public sealed record RuntimeOptions
{
    /// <summary>How long a claimed task stays leased without a renewal; a dead silo's task runs again after this.</summary>
    public TimeSpan TaskLease { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>How long a coordinator holds a job without a renewal; another silo takes over after this.</summary>
    public TimeSpan CoordinatorLease { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Leases are renewed three times per lease period, so one slow round trip does not lose them.</summary>
    public TimeSpan RenewEvery => TaskLease / 3;
    public TimeSpan CoordinatorRenewEvery => CoordinatorLease / 3;
    /// <summary>
    /// The longest an idle worker, or a coordinator waiting for jobs or for its job's end, sleeps when no notification
    /// arrives: notifications are the fast path, this poll the fallback.
    /// </summary>
    public TimeSpan PollInterval { get; init; } = TimeSpan.FromSeconds(1);
    /// <summary>
    /// How often a follower of a job (the embedded run, a coordinator ending a job) looks at its tasks when no
    /// notification arrives.
    /// </summary>
    public TimeSpan ProgressInterval { get; init; } = TimeSpan.FromMilliseconds(250);
    public TimeSpan HeartbeatEvery { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>A silo is live while its last heartbeat is younger than this.</summary>
    public TimeSpan LiveWithin => HeartbeatEvery * 3;
    /// <summary>On drain, how long a running task may go on before it is cancelled and released.</summary>
    public TimeSpan DrainGrace { get; init; } = TimeSpan.FromSeconds(20);
    /// <summary>Jobs one silo coordinates at once; coordinating is mostly waiting.</summary>
    public int MaxCoordinatedJobs { get; init; } = 4;

    /// <summary>Timings derived from one lease duration: renewals, heartbeats and polls scale with it.</summary>
    public static RuntimeOptions ForLease(TimeSpan lease, TimeSpan? drainGrace = null)
    {
        var poll = TimeSpan.FromTicks(Math.Clamp(lease.Ticks / 10, TimeSpan.FromMilliseconds(20).Ticks, TimeSpan.FromSeconds(1).Ticks));
        return new RuntimeOptions
        {
            TaskLease = lease,
            CoordinatorLease = lease,
            PollInterval = poll,
            ProgressInterval = TimeSpan.FromTicks(Math.Min(poll.Ticks, TimeSpan.FromMilliseconds(250).Ticks)),
            HeartbeatEvery = lease / 3,
            DrainGrace = drainGrace ?? TimeSpan.FromSeconds(20),
        };
    }
}
