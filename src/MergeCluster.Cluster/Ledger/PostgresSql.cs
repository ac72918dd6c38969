namespace MergeCluster.Cluster.Ledger;

/// <summary>
/// Every statement the PostgreSQL ledger sends, in one place. Times come from the server's clock (now()), so silos
/// with skewed clocks still agree on when a lease expires. Each statement is one round trip; the ones that make work
/// appear end with a NOTIFY on <see cref="WorkChannel"/>, and the ones a coordinator or a job's follower must act on
/// (a job submitted, cancelled, failed or ended, or its last task done) with one on <see cref="JobsChannel"/>; both
/// are delivered on commit.
/// </summary>
internal static class PostgresSql
{
    public const string WorkChannel = "mergecluster_work";
    public const string JobsChannel = "mergecluster_jobs";

    // Serialises schema creation: concurrent CREATE ... IF NOT EXISTS can still collide in the catalog.
    private const string SchemaLock = "7882832511190133875"; // "mergecls" as a bigint

    public const string Schema = $"""
        SELECT pg_advisory_xact_lock({SchemaLock});
        CREATE SCHEMA IF NOT EXISTS mergecluster;
        CREATE TABLE IF NOT EXISTS mergecluster.silos (
            name        text PRIMARY KEY,
            host        text NOT NULL,
            pid         integer NOT NULL,
            started_at  timestamptz NOT NULL,
            heartbeat   timestamptz NOT NULL,
            models      text
        );
        CREATE TABLE IF NOT EXISTS mergecluster.jobs (
            id                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            submission               uuid NOT NULL UNIQUE,
            state                    text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            recipe_text              text NOT NULL,
            recipe_directory         text NOT NULL,
            options                  text NOT NULL,
            coordinator              text,
            coordinator_lease_until  timestamptz,
            trace_parent             text,
            submitted_at             timestamptz NOT NULL DEFAULT now(),
            finished_at              timestamptz,
            error                    text
        );
        CREATE INDEX IF NOT EXISTS jobs_unfinished ON mergecluster.jobs (id) WHERE finished_at IS NULL;
        CREATE TABLE IF NOT EXISTS mergecluster.tasks (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            job_id          bigint NOT NULL REFERENCES mergecluster.jobs (id) ON DELETE CASCADE,
            name            text NOT NULL,
            kind            text NOT NULL,
            payload         text NOT NULL,
            bytes           bigint NOT NULL,
            preferred_silo  text,
            state           text NOT NULL CHECK (state IN ('pending', 'leased', 'done', 'failed')),
            remaining_deps  integer NOT NULL,
            attempts        integer NOT NULL DEFAULT 0,
            max_attempts    integer NOT NULL,
            silo            text,
            lease_until     timestamptz,
            started_at      timestamptz,
            finished_at     timestamptz,
            error           text,
            UNIQUE (job_id, name)
        );
        CREATE INDEX IF NOT EXISTS tasks_claimable ON mergecluster.tasks (job_id, id)
            WHERE state IN ('pending', 'leased') AND remaining_deps = 0;
        CREATE INDEX IF NOT EXISTS tasks_leased ON mergecluster.tasks (lease_until) WHERE state = 'leased';
        CREATE INDEX IF NOT EXISTS tasks_pending ON mergecluster.tasks (job_id) WHERE state = 'pending';
        CREATE TABLE IF NOT EXISTS mergecluster.task_deps (
            task_id     bigint NOT NULL REFERENCES mergecluster.tasks (id) ON DELETE CASCADE,
            depends_on  bigint NOT NULL REFERENCES mergecluster.tasks (id) ON DELETE CASCADE,
            PRIMARY KEY (depends_on, task_id)
        );
        """;

    public const string Listen = $"LISTEN {WorkChannel}; LISTEN {JobsChannel}";

    /// <summary>Appended to a data-modifying CTE named <c>changed</c>: notifies when it changed a row and returns how many it changed.</summary>
    private const string NotifyChanged = $"SELECT count(*) FROM changed, LATERAL pg_notify('{WorkChannel}', '') AS n";

    /// <summary>As <see cref="NotifyChanged"/>, on both channels: for a job's cancel or end, which workers and coordinators both act on.</summary>
    private const string NotifyChangedToAll =
        $"SELECT count(*) FROM changed, LATERAL pg_notify('{WorkChannel}', '') AS w, LATERAL pg_notify('{JobsChannel}', '') AS j";

    // ---- membership ----

    public const string RegisterSilo = """
        INSERT INTO mergecluster.silos (name, host, pid, started_at, heartbeat, models)
        VALUES (@name, @host, @pid, @started_at, now(), @models)
        ON CONFLICT (name) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, started_at = EXCLUDED.started_at,
            heartbeat = now(), models = EXCLUDED.models
        """;

    public const string Heartbeat = "UPDATE mergecluster.silos SET heartbeat = now() WHERE name = @name";

    public const string DeregisterSilo = "DELETE FROM mergecluster.silos WHERE name = @name";

    public const string LiveSilos = """
        SELECT name, host, pid, started_at, heartbeat, models FROM mergecluster.silos
        WHERE heartbeat > now() - @within ORDER BY name
        """;

    // ---- jobs ----

    private const string JobColumns = """
        id, state, recipe_text, recipe_directory, options, coordinator, coordinator_lease_until, trace_parent,
        submitted_at, finished_at, error
        """;

    /// <summary>The submission id makes a retried submit (its reply lost to a dropped connection) return the same job.</summary>
    public const string SubmitJob = $"""
        WITH changed AS (
            INSERT INTO mergecluster.jobs (submission, state, recipe_text, recipe_directory, options, trace_parent)
            VALUES (@submission, 'queued', @recipe_text, @recipe_directory, @options, @trace_parent)
            ON CONFLICT (submission) DO UPDATE SET submission = EXCLUDED.submission
            RETURNING id)
        SELECT changed.id FROM changed, LATERAL pg_notify('{JobsChannel}', '') AS n
        """;

    public const string GetJob = $"SELECT {JobColumns} FROM mergecluster.jobs WHERE id = @id";

    public const string ListJobs = $"SELECT {JobColumns} FROM mergecluster.jobs ORDER BY id DESC LIMIT @limit";

    public const string CancelJob = $"""
        WITH changed AS (
            UPDATE mergecluster.jobs SET state = 'cancelled', error = COALESCE(error, 'cancelled')
            WHERE id = @id AND state IN ('queued', 'running')
            RETURNING id)
        {NotifyChangedToAll}
        """;

    /// <summary>Unfinished jobs include failed and cancelled ones not yet cleaned up by their coordinator.</summary>
    public const string AcquireCoordinator = $"""
        UPDATE mergecluster.jobs SET coordinator = @silo, coordinator_lease_until = now() + @lease
        WHERE id = (
            SELECT id FROM mergecluster.jobs
            WHERE finished_at IS NULL AND (coordinator_lease_until IS NULL OR coordinator_lease_until <= now())
            ORDER BY id LIMIT 1
            FOR UPDATE SKIP LOCKED)
        RETURNING {JobColumns}
        """;

    public const string RenewCoordinator = """
        UPDATE mergecluster.jobs SET coordinator_lease_until = now() + @lease
        WHERE id = @id AND coordinator = @silo AND finished_at IS NULL
        """;

    /// <summary>
    /// One statement, so one transaction: the job moves to running only with all its tasks and dependency edges.
    /// The guard (still queued, this silo coordinates) makes a repeated call a no-op.
    /// </summary>
    public const string AddTasks = $"""
        WITH job AS (
            UPDATE mergecluster.jobs SET state = 'running', options = COALESCE(@options, options)
            WHERE id = @job AND coordinator = @silo AND state = 'queued'
            RETURNING id),
        inserted AS (
            INSERT INTO mergecluster.tasks (job_id, name, kind, payload, bytes, preferred_silo, state, remaining_deps, max_attempts)
            SELECT job.id, x.name, x.kind, x.payload, x.bytes, x.preferred_silo, 'pending', x.remaining_deps, @max_attempts
            FROM job, unnest(@names::text[], @kinds::text[], @payloads::text[], @bytes::bigint[], @preferred::text[], @remaining::integer[])
                AS x(name, kind, payload, bytes, preferred_silo, remaining_deps)
            RETURNING id, name),
        edges AS (
            INSERT INTO mergecluster.task_deps (task_id, depends_on)
            SELECT t.id, d.id FROM unnest(@dep_tasks::text[], @dep_on::text[]) AS x(task, dep)
            JOIN inserted t ON t.name = x.task JOIN inserted d ON d.name = x.dep)
        SELECT count(*) FROM job, LATERAL pg_notify('{WorkChannel}', '') AS n
        """;

    /// <summary>A job already failed by a task or cancelled keeps that state and its first error.</summary>
    public const string FinishJob = $"""
        WITH changed AS (
            UPDATE mergecluster.jobs
            SET state = CASE WHEN state IN ('failed', 'cancelled') THEN state ELSE @state END,
                error = COALESCE(error, @error), finished_at = now(), coordinator = NULL, coordinator_lease_until = NULL
            WHERE id = @id AND finished_at IS NULL
            RETURNING id)
        {NotifyChangedToAll}
        """;

    // ---- tasks ----

    /// <summary>
    /// First statement of a claim: its commit does not wait for the WAL flush. A claim is the one commit on a task's
    /// path (a completion overlaps the next task's work), and under a merge's write load on a shared disk each flush
    /// waits tens of milliseconds. Losing an unflushed claim in a server crash is harmless: the task only runs again
    /// under the same attempt number, as after any lost lease, and runners of one attempt write identical bytes through
    /// files of their own; a job the claim failed for an exhausted lease is failed again by the next claim. Completions,
    /// failures and everything else stay synchronous, and the first of them to commit after a claim flushes it too (the
    /// WAL is one sequence): a "done" is durable before its scratch is deleted.
    /// </summary>
    public const string ClaimCommitsAsynchronously = "SELECT set_config('synchronous_commit', 'off', true)";

    /// <summary>
    /// Second statement of a claim: a task whose last allowed attempt lost its lease can never be claimed again, so it
    /// fails its job here rather than leaving the job running forever. Cheap: the partial index holds leased tasks only.
    /// </summary>
    public const string FailExhaustedLeases = $"""
        WITH exhausted AS (
            UPDATE mergecluster.tasks
            SET state = 'failed', lease_until = NULL, finished_at = now(), error = format(@expired_template, name, attempts)
            WHERE state = 'leased' AND lease_until <= now() AND attempts >= max_attempts
            RETURNING job_id, error),
        failed_jobs AS (
            UPDATE mergecluster.jobs j SET state = 'failed', error = e.error
            FROM exhausted e WHERE j.id = e.job_id AND j.state IN ('queued', 'running')
            RETURNING j.id)
        -- The second column is never read: it is there so the failed jobs' notification is sent.
        SELECT (SELECT count(*) FROM exhausted), (SELECT count(*) FROM failed_jobs, LATERAL pg_notify('{JobsChannel}', '') AS n)
        """;

    /// <summary>
    /// Third statement of a claim: the first ready task (dependencies done, job running, attempts left; an expired
    /// lease counts as free), this silo's preferred tasks first, locked with SKIP LOCKED so concurrent claimers never
    /// wait on each other or take the same task. Returns the previous state to tell a lease expiry apart.
    /// </summary>
    public const string ClaimTask = """
        WITH candidate AS (
            SELECT t.id, t.state AS previous_state
            FROM mergecluster.tasks t JOIN mergecluster.jobs j ON j.id = t.job_id
            WHERE j.state = 'running' AND t.remaining_deps = 0 AND t.attempts < t.max_attempts
              AND (t.state = 'pending' OR (t.state = 'leased' AND t.lease_until <= now()))
            ORDER BY CASE WHEN t.preferred_silo = @silo THEN 0 WHEN t.preferred_silo IS NULL THEN 1 ELSE 2 END, t.job_id, t.id
            LIMIT 1
            FOR UPDATE OF t SKIP LOCKED)
        UPDATE mergecluster.tasks t
        SET state = 'leased', silo = @silo, lease_until = now() + @lease, attempts = t.attempts + 1,
            started_at = now(), finished_at = NULL
        FROM candidate c, mergecluster.jobs j
        WHERE t.id = c.id AND j.id = t.job_id
        RETURNING t.job_id, t.id, t.name, t.kind, t.payload, t.attempts, t.silo, t.lease_until, j.trace_parent, t.bytes, c.previous_state
        """;

    /// <summary>The attempt holds the lease while the row is still leased to it (expired but not taken over counts).</summary>
    private const string Held = "t.id = @id AND t.silo = @silo AND t.attempts = @attempt AND t.state = 'leased'";

    public const string RenewTask = $"""
        UPDATE mergecluster.tasks t SET lease_until = now() + @duration
        FROM mergecluster.jobs j
        WHERE {Held} AND j.id = t.job_id AND j.state = 'running'
        """;

    /// <summary>
    /// The job's last task tells its coordinator at once. "Last" cannot be read from the statement's snapshot: two
    /// tasks completing together each see the other still leased. So every completion that leaves no task unclaimed
    /// notifies: the last few tasks of a job (about one per worker) wake the coordinator, and the very last always does.
    /// </summary>
    public const string CompleteTask = $"""
        WITH changed AS (
            UPDATE mergecluster.tasks t SET state = 'done', lease_until = NULL, finished_at = now()
            WHERE {Held}
            RETURNING t.id, t.job_id),
        unblocked AS (
            UPDATE mergecluster.tasks t SET remaining_deps = t.remaining_deps - 1
            FROM mergecluster.task_deps d JOIN changed ON d.depends_on = changed.id
            WHERE t.id = d.task_id)
        SELECT count(*) FROM changed, LATERAL pg_notify('{WorkChannel}', '') AS w,
            LATERAL (SELECT CASE WHEN NOT EXISTS (SELECT FROM mergecluster.tasks o WHERE o.job_id = changed.job_id AND o.state = 'pending')
                THEN pg_notify('{JobsChannel}', '') END) AS j
        """;

    public const string FailTask = $"""
        WITH changed AS (
            UPDATE mergecluster.tasks t
            SET state = CASE WHEN @permanent OR t.attempts >= t.max_attempts THEN 'failed' ELSE 'pending' END,
                lease_until = NULL, finished_at = now(), error = @error
            WHERE {Held}
            RETURNING t.job_id, t.state),
        failed_job AS (
            UPDATE mergecluster.jobs j SET state = 'failed', error = @job_error
            FROM changed c WHERE c.state = 'failed' AND j.id = c.job_id AND j.state IN ('queued', 'running')
            RETURNING j.id)
        SELECT count(*) FROM changed, LATERAL pg_notify('{WorkChannel}', '') AS w
            LEFT JOIN LATERAL (SELECT pg_notify('{JobsChannel}', '') FROM failed_job) AS j ON true
        """;

    public const string ReleaseTask = $"""
        WITH changed AS (
            UPDATE mergecluster.tasks t SET state = 'pending', attempts = t.attempts - 1, lease_until = NULL
            WHERE {Held}
            RETURNING t.id)
        {NotifyChanged}
        """;

    public const string ListTasks = """
        SELECT id, name, kind, state, attempts, silo, lease_until, error, bytes, started_at, finished_at
        FROM mergecluster.tasks WHERE job_id = @job ORDER BY id
        """;

    public const string CountTasks = """
        SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'leased'),
               count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'failed')
        FROM mergecluster.tasks WHERE job_id = @job
        """;
}
