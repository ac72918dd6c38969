using System.Data.Common;
using System.Net.Sockets;
using MergeCluster.Engine.Ledger;
using MergeCluster.Engine.Telemetry;
using Npgsql;
using NpgsqlTypes;
using Polly;
using Polly.Retry;

namespace MergeCluster.Cluster.Ledger;

/// <summary>Retry and attempt settings of the PostgreSQL ledger.</summary>
public sealed record PostgresLedgerOptions
{
    /// <summary>Attempts a task gets before its job fails.</summary>
    public int MaxAttempts { get; init; } = TaskGraph.DefaultMaxAttempts;
    /// <summary>Retries of one ledger call on a transient error; with the backoff below, about 20 s: a server restart.</summary>
    public int RetryAttempts { get; init; } = 12;
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromMilliseconds(100);
    public TimeSpan RetryMaxDelay { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>Where retries and listener reconnects are reported (a silo's log); never given a credential.</summary>
    public Action<string>? Log { get; init; }
    /// <summary>
    /// Whether to hold a connection that LISTENs, so waits end at the notification. Without it waits run to their
    /// timeout: for clients that never wait, and save the second connection.
    /// </summary>
    public bool Listen { get; init; } = true;

    /// <summary>
    /// For one-shot clients (submit, status, cancel): an unreachable server is reported after a few seconds; only a
    /// client that follows a job listens.
    /// </summary>
    public static PostgresLedgerOptions Client(bool listen) => new() { RetryAttempts = 3, Listen = listen };
}

/// <summary>
/// The cluster's ledger in PostgreSQL: membership, jobs, tasks and leases in the <c>mergecluster</c> schema, created
/// idempotently on open. Every call is one round trip retried by Polly on transient errors (a restarted server
/// included); claims use FOR UPDATE SKIP LOCKED; a dedicated connection LISTENs for work and job notifications.
/// </summary>
public sealed class PostgresLedger : ILedger
{
    private readonly NpgsqlDataSource _dataSource;
    private readonly LedgerConnection _connection;
    private readonly PostgresLedgerOptions _options;
    private readonly ResiliencePipeline _retry;
    private readonly WorkSignal _work = new();
    private readonly WorkSignal _jobChange = new();
    private readonly CancellationTokenSource _closing = new();
    private readonly TaskCompletionSource _listening = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Task _listener = Task.CompletedTask;
    private long _roundTrips;

    /// <summary>Statements sent to the server so far, retries included: what the round-trips-per-task figure counts.</summary>
    public long RoundTrips => Interlocked.Read(ref _roundTrips);

    /// <summary>Where the ledger lives, without the password.</summary>
    public string Display => _connection.Display;

    private PostgresLedger(LedgerConnection connection, PostgresLedgerOptions options)
    {
        _connection = connection;
        _options = options;
        _dataSource = new NpgsqlDataSourceBuilder(connection.ConnectionString).Build();
        _retry = new ResiliencePipelineBuilder().AddRetry(new RetryStrategyOptions
        {
            ShouldHandle = new PredicateBuilder().Handle<Exception>(IsTransient),
            MaxRetryAttempts = options.RetryAttempts,
            Delay = options.RetryDelay,
            MaxDelay = options.RetryMaxDelay,
            BackoffType = DelayBackoffType.Exponential,
            UseJitter = true,
            OnRetry = args =>
            {
                // Pooled connections to a restarted server are all dead: drop them rather than fail on each in turn.
                _dataSource.Clear();
                MergeTelemetry.LedgerRetries.Add(1);
                // One line per call that starts retrying, not one per retry: an outage is loud enough as it is.
                if (args.AttemptNumber == 0) _options.Log?.Invoke($"ledger {Display}: {Describe(args.Outcome.Exception)}; retrying");
                return ValueTask.CompletedTask;
            },
        }).Build();
    }

    /// <summary>Connects, creates the schema if needed and, unless told not to, starts listening for notifications.</summary>
    public static async Task<PostgresLedger> OpenAsync(LedgerConnection connection, PostgresLedgerOptions? options, CancellationToken ct)
    {
        var ledger = new PostgresLedger(connection, options ?? new PostgresLedgerOptions());
        try
        {
            await ledger.RunAsync(async token =>
            {
                await using var conn = await ledger._dataSource.OpenConnectionAsync(token);
                await using var tx = await conn.BeginTransactionAsync(token);
                await using (var cmd = new NpgsqlCommand(PostgresSql.Schema, conn, tx)) await cmd.ExecuteNonQueryAsync(token);
                await tx.CommitAsync(token);
                return 0;
            }, ct);
            if (ledger._options.Listen)
            {
                ledger._listener = ledger.ListenAsync(ledger._closing.Token);
                // Tests and the first wait rely on notifications from here on; a listener that cannot start in time
                // leaves the ledger on polling, which it keeps retrying to leave.
                await Task.WhenAny(ledger._listening.Task, Task.Delay(TimeSpan.FromSeconds(5), ct));
            }
            return ledger;
        }
        catch
        {
            await ledger.DisposeAsync();
            throw;
        }
    }

    // ---- membership ----

    public Task RegisterSiloAsync(SiloRecord silo, CancellationToken ct) => ExecuteAsync(PostgresSql.RegisterSilo, p =>
    {
        p.AddWithValue("name", silo.Name);
        p.AddWithValue("host", silo.Host);
        p.AddWithValue("pid", silo.Pid);
        p.AddWithValue("started_at", silo.StartedAt.ToUniversalTime());
        p.Add(Text("models", silo.Models));
    }, ct);

    public Task HeartbeatAsync(string silo, CancellationToken ct) => ExecuteAsync(PostgresSql.Heartbeat, p => p.AddWithValue("name", silo), ct);

    public Task DeregisterSiloAsync(string silo, CancellationToken ct) => ExecuteAsync(PostgresSql.DeregisterSilo, p => p.AddWithValue("name", silo), ct);

    public Task<IReadOnlyList<SiloRecord>> LiveSilosAsync(TimeSpan within, CancellationToken ct) =>
        QueryAsync(PostgresSql.LiveSilos, p => p.AddWithValue("within", within), r => new SiloRecord(
            r.GetString(0), r.GetString(1), r.GetInt32(2), r.GetFieldValue<DateTimeOffset>(3), r.GetFieldValue<DateTimeOffset>(4),
            r.IsDBNull(5) ? null : r.GetString(5)), ct);

    // ---- jobs ----

    public async Task<long> SubmitJobAsync(JobSubmission job, CancellationToken ct)
    {
        var submission = Guid.NewGuid();
        var ids = await QueryAsync(PostgresSql.SubmitJob, p =>
        {
            p.AddWithValue("submission", submission);
            p.AddWithValue("recipe_text", job.RecipeText);
            p.AddWithValue("recipe_directory", job.RecipeDirectory);
            p.AddWithValue("options", job.Options);
            p.Add(Text("trace_parent", job.TraceParent));
        }, r => r.GetInt64(0), ct);
        return ids[0];
    }

    public async Task<JobRecord?> GetJobAsync(long jobId, CancellationToken ct) =>
        (await QueryAsync(PostgresSql.GetJob, p => p.AddWithValue("id", jobId), ReadJob, ct)).SingleOrDefault();

    public Task<IReadOnlyList<JobRecord>> ListJobsAsync(int limit, CancellationToken ct) =>
        QueryAsync(PostgresSql.ListJobs, p => p.AddWithValue("limit", limit), ReadJob, ct);

    public async Task<bool> CancelJobAsync(long jobId, CancellationToken ct) =>
        await CountAsync(PostgresSql.CancelJob, p => p.AddWithValue("id", jobId), ct) > 0;

    public async Task<JobRecord?> TryAcquireCoordinatorAsync(string silo, TimeSpan lease, CancellationToken ct) =>
        (await QueryAsync(PostgresSql.AcquireCoordinator, p =>
        {
            p.AddWithValue("silo", silo);
            p.AddWithValue("lease", lease);
        }, ReadJob, ct)).SingleOrDefault();

    public async Task<bool> RenewCoordinatorAsync(long jobId, string silo, TimeSpan lease, CancellationToken ct) =>
        await ExecuteAsync(PostgresSql.RenewCoordinator, p =>
        {
            p.AddWithValue("id", jobId);
            p.AddWithValue("silo", silo);
            p.AddWithValue("lease", lease);
        }, ct) > 0;

    public async Task AddTasksAsync(long jobId, string silo, IReadOnlyList<TaskSpec> tasks, CancellationToken ct, string? options = null)
    {
        var remaining = TaskGraph.Validate(tasks);
        var edges = tasks.SelectMany(t => t.DependsOn.Distinct(StringComparer.Ordinal).Select(d => (Task: t.Name, On: d))).ToArray();
        await CountAsync(PostgresSql.AddTasks, p =>
        {
            p.AddWithValue("job", jobId);
            p.AddWithValue("silo", silo);
            p.Add(Text("options", options));
            p.AddWithValue("max_attempts", _options.MaxAttempts);
            p.AddWithValue("names", tasks.Select(t => t.Name).ToArray());
            p.AddWithValue("kinds", tasks.Select(t => t.Kind).ToArray());
            p.AddWithValue("payloads", tasks.Select(t => t.Payload).ToArray());
            p.AddWithValue("bytes", tasks.Select(t => t.Bytes).ToArray());
            p.Add(new NpgsqlParameter("preferred", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = tasks.Select(t => t.PreferredSilo).ToArray() });
            p.AddWithValue("remaining", remaining);
            p.AddWithValue("dep_tasks", edges.Select(e => e.Task).ToArray());
            p.AddWithValue("dep_on", edges.Select(e => e.On).ToArray());
        }, ct);
    }

    public Task FinishJobAsync(long jobId, JobState state, string? error, CancellationToken ct) => CountAsync(PostgresSql.FinishJob, p =>
    {
        p.AddWithValue("id", jobId);
        p.AddWithValue("state", StateName(state));
        p.Add(Text("error", error));
    }, ct);

    // ---- tasks ----

    public Task<TaskLease?> ClaimTaskAsync(string silo, TimeSpan lease, CancellationToken ct) => RunAsync(async token =>
    {
        // Three statements, one round trip, one implicit transaction.
        await using var batch = _dataSource.CreateBatch();
        batch.BatchCommands.Add(Command(PostgresSql.ClaimCommitsAsynchronously, _ => { }));
        batch.BatchCommands.Add(Command(PostgresSql.FailExhaustedLeases, p => p.AddWithValue("expired_template", TaskGraph.LeaseExpiredTemplate)));
        batch.BatchCommands.Add(Command(PostgresSql.ClaimTask, p =>
        {
            p.AddWithValue("silo", silo);
            p.AddWithValue("lease", lease);
        }));
        await using var r = await batch.ExecuteReaderAsync(token);
        await r.NextResultAsync(token);
        await r.ReadAsync(token);
        long exhausted = r.GetInt64(0);
        if (exhausted > 0) MergeTelemetry.LeaseExpiries.Add(exhausted);
        await r.NextResultAsync(token);
        if (!await r.ReadAsync(token)) return null;
        if (r.GetString(10) == "leased") MergeTelemetry.LeaseExpiries.Add(1);
        return new TaskLease(r.GetInt64(0), r.GetInt64(1), r.GetString(2), r.GetString(3), r.GetString(4), r.GetInt32(5), r.GetString(6),
            r.GetFieldValue<DateTimeOffset>(7), r.IsDBNull(8) ? null : r.GetString(8), r.GetInt64(9));
    }, ct);

    public async Task<bool> RenewTaskAsync(TaskLease lease, TimeSpan duration, CancellationToken ct) =>
        await ExecuteAsync(PostgresSql.RenewTask, p =>
        {
            AddLease(p, lease);
            p.AddWithValue("duration", duration);
        }, ct) > 0;

    public async Task<bool> CompleteTaskAsync(TaskLease lease, CancellationToken ct) =>
        await CountAsync(PostgresSql.CompleteTask, p => AddLease(p, lease), ct) > 0;

    public async Task<bool> FailTaskAsync(TaskLease lease, string error, bool permanent, CancellationToken ct) =>
        await CountAsync(PostgresSql.FailTask, p =>
        {
            AddLease(p, lease);
            p.AddWithValue("permanent", permanent);
            p.AddWithValue("error", error);
            p.AddWithValue("job_error", TaskGraph.JobError(lease.Name, lease.Attempt, error, permanent));
        }, ct) > 0;

    public async Task<bool> ReleaseTaskAsync(TaskLease lease, CancellationToken ct) =>
        await CountAsync(PostgresSql.ReleaseTask, p => AddLease(p, lease), ct) > 0;

    public Task<IReadOnlyList<TaskRecord>> ListTasksAsync(long jobId, CancellationToken ct) =>
        QueryAsync(PostgresSql.ListTasks, p => p.AddWithValue("job", jobId), r => new TaskRecord(
            r.GetInt64(0), r.GetString(1), r.GetString(2), Enum.Parse<TaskState>(r.GetString(3), ignoreCase: true), r.GetInt32(4),
            r.IsDBNull(5) ? null : r.GetString(5), NullableTime(r, 6), r.IsDBNull(7) ? null : r.GetString(7), r.GetInt64(8),
            NullableTime(r, 9), NullableTime(r, 10)), ct);

    public async Task<TaskCounts> CountTasksAsync(long jobId, CancellationToken ct) =>
        (await QueryAsync(PostgresSql.CountTasks, p => p.AddWithValue("job", jobId), r => new TaskCounts(
            (int)r.GetInt64(0), (int)r.GetInt64(1), (int)r.GetInt64(2), (int)r.GetInt64(3)), ct))[0];

    public Task WaitForWorkAsync(TimeSpan timeout, CancellationToken ct) => _work.WaitAsync(timeout, TimeProvider.System, ct);

    public Task WaitForJobChangeAsync(TimeSpan timeout, CancellationToken ct) => _jobChange.WaitAsync(timeout, TimeProvider.System, ct);

    // ---- notifications ----

    /// <summary>
    /// Holds one connection that LISTENs on both channels and pulses the channel's waiters on each notification. When
    /// it breaks (a server restart) it reconnects with backoff; meanwhile waiters fall back to polling, and a pulse of
    /// both after reconnecting covers whatever was notified while nobody listened.
    /// </summary>
    private async Task ListenAsync(CancellationToken ct)
    {
        var backoff = _options.RetryDelay;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await using var conn = await _dataSource.OpenConnectionAsync(ct);
                conn.Notification += (_, e) => (e.Channel == PostgresSql.JobsChannel ? _jobChange : _work).Pulse();
                await using (var listen = new NpgsqlCommand(PostgresSql.Listen, conn)) await listen.ExecuteNonQueryAsync(ct);
                _work.Pulse();
                _jobChange.Pulse();
                _listening.TrySetResult();
                backoff = _options.RetryDelay;
                while (true)
                {
                    // A quiet connection is pinged now and then, so a dead server is noticed without traffic.
                    if (await conn.WaitAsync(TimeSpan.FromSeconds(10), ct)) continue;
                    await using var ping = new NpgsqlCommand("SELECT 1", conn);
                    await ping.ExecuteScalarAsync(ct);
                }
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e)
            {
                _options.Log?.Invoke($"ledger {Display}: listener disconnected ({Describe(e)}); polling until it reconnects");
                try
                {
                    await Task.Delay(backoff, ct);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
                backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, _options.RetryMaxDelay.Ticks));
            }
        }
    }

    // ---- plumbing ----

    /// <summary>One round trip under the retry policy; failures that outlive it become a one-line <see cref="LedgerException"/>.</summary>
    private async Task<T> RunAsync<T>(Func<CancellationToken, Task<T>> call, CancellationToken ct)
    {
        try
        {
            return await _retry.ExecuteAsync(async token =>
            {
                Interlocked.Increment(ref _roundTrips);
                return await call(token);
            }, ct);
        }
        catch (Exception e) when (e is NpgsqlException or SocketException or TimeoutException)
        {
            throw new LedgerException($"ledger {Display}: {Describe(e)}", e);
        }
    }

    private Task<int> ExecuteAsync(string sql, Action<NpgsqlParameterCollection> bind, CancellationToken ct) => RunAsync(async token =>
    {
        await using var cmd = _dataSource.CreateCommand(sql);
        bind(cmd.Parameters);
        return await cmd.ExecuteNonQueryAsync(token);
    }, ct);

    /// <summary>For statements ending in a count (how many rows a data-modifying CTE changed).</summary>
    private Task<long> CountAsync(string sql, Action<NpgsqlParameterCollection> bind, CancellationToken ct) => RunAsync(async token =>
    {
        await using var cmd = _dataSource.CreateCommand(sql);
        bind(cmd.Parameters);
        return (long)(await cmd.ExecuteScalarAsync(token))!;
    }, ct);

    private Task<IReadOnlyList<T>> QueryAsync<T>(string sql, Action<NpgsqlParameterCollection> bind, Func<DbDataReader, T> read, CancellationToken ct) => RunAsync<IReadOnlyList<T>>(async token =>
    {
        await using var cmd = _dataSource.CreateCommand(sql);
        bind(cmd.Parameters);
        await using var r = await cmd.ExecuteReaderAsync(token);
        var rows = new List<T>();
        while (await r.ReadAsync(token)) rows.Add(read(r));
        return rows;
    }, ct);

    private static NpgsqlBatchCommand Command(string sql, Action<NpgsqlParameterCollection> bind)
    {
        var command = new NpgsqlBatchCommand(sql);
        bind(command.Parameters);
        return command;
    }

    private static void AddLease(NpgsqlParameterCollection p, TaskLease lease)
    {
        p.AddWithValue("id", lease.TaskId);
        p.AddWithValue("silo", lease.Silo);
        p.AddWithValue("attempt", lease.Attempt);
    }

    private static NpgsqlParameter Text(string name, string? value) => new(name, NpgsqlDbType.Text) { Value = (object?)value ?? DBNull.Value };

    private static JobRecord ReadJob(DbDataReader r) => new(
        r.GetInt64(0), Enum.Parse<JobState>(r.GetString(1), ignoreCase: true), r.GetString(2), r.GetString(3), r.GetString(4),
        r.IsDBNull(5) ? null : r.GetString(5), NullableTime(r, 6), r.IsDBNull(7) ? null : r.GetString(7),
        r.GetFieldValue<DateTimeOffset>(8), NullableTime(r, 9), r.IsDBNull(10) ? null : r.GetString(10));

    private static DateTimeOffset? NullableTime(DbDataReader r, int i) => r.IsDBNull(i) ? null : r.GetFieldValue<DateTimeOffset>(i);

    private static string StateName(JobState state) => state.ToString().ToLowerInvariant();

    /// <summary>
    /// Lost connections and server restarts are worth retrying; so are the server's own transient states.
    /// Anything else (a bad password, a missing database, a bug in a statement) fails at once.
    /// </summary>
    private static bool IsTransient(Exception e) => e switch
    {
        PostgresException pg => pg.IsTransient || pg.SqlState.StartsWith("08", StringComparison.Ordinal)
            || pg.SqlState is "57P01" or "57P02" or "57P03" or "40001" or "40P01",
        NpgsqlException npg => npg.IsTransient || npg.InnerException is IOException or SocketException or TimeoutException,
        SocketException or TimeoutException => true,
        _ => false,
    };

    /// <summary>One line for a database error, scrubbed of the password.</summary>
    private string Describe(Exception? e)
    {
        if (e is null) return "unknown error";
        var message = e switch
        {
            PostgresException pg => $"{pg.MessageText} ({pg.SqlState})",
            NpgsqlException { InnerException: SocketException s } => s.Message,
            _ => e.Message,
        };
        return _connection.Scrub(message.ReplaceLineEndings(" "));
    }

    public async ValueTask DisposeAsync()
    {
        _closing.Cancel();
        await _listener;
        await _dataSource.DisposeAsync();
        _closing.Dispose();
    }
}
