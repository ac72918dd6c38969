namespace MergeCluster.Engine.Ledger;

/// <summary>The rules every ledger applies to a plan and to failing tasks, so both ledgers behave and report alike.</summary>
public static class TaskGraph
{
    /// <summary>Attempts a task gets before its job fails, unless the ledger is configured otherwise.</summary>
    public const int DefaultMaxAttempts = 3;

    /// <summary>
    /// The job error when the lease of a task's last attempt expires; a printf-style template (%s: name, attempts)
    /// because PostgreSQL fills it in with format() inside the claim statement.
    /// </summary>
    public const string LeaseExpiredTemplate = "task %s failed after %s attempts: its lease expired (the silo running it stopped)";

    /// <summary>
    /// Checks that task names are unique, dependencies name tasks of the plan and there is no cycle
    /// (a cycle would leave the job running forever). Returns each task's dependency count.
    /// </summary>
    public static int[] Validate(IReadOnlyList<TaskSpec> tasks)
    {
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < tasks.Count; i++)
        {
            if (!index.TryAdd(tasks[i].Name, i)) throw new ArgumentException($"plan: task name '{tasks[i].Name}' is used twice");
        }
        var remaining = new int[tasks.Count];
        var dependents = new List<int>[tasks.Count];
        for (int i = 0; i < tasks.Count; i++)
        {
            foreach (var dep in tasks[i].DependsOn.Distinct(StringComparer.Ordinal))
            {
                if (!index.TryGetValue(dep, out int d)) throw new ArgumentException($"plan: task '{tasks[i].Name}' depends on unknown task '{dep}'");
                (dependents[d] ??= []).Add(i);
                remaining[i]++;
            }
        }
        // Kahn's algorithm: whatever is never released sits on a cycle.
        var left = (int[])remaining.Clone();
        var ready = new Queue<int>(Enumerable.Range(0, tasks.Count).Where(i => left[i] == 0));
        int released = 0;
        while (ready.TryDequeue(out int i))
        {
            released++;
            foreach (int j in dependents[i] ?? [])
            {
                if (--left[j] == 0) ready.Enqueue(j);
            }
        }
        if (released != tasks.Count)
        {
            var stuck = tasks.Where((_, i) => left[i] > 0).Select(t => t.Name).First();
            throw new ArgumentException($"plan: task '{stuck}' is on a dependency cycle");
        }
        return remaining;
    }

    /// <summary>The job error for a task's failed attempt that ends the job.</summary>
    public static string JobError(string task, int attempt, string error, bool permanent) =>
        permanent ? $"task {task} failed: {error}" : $"task {task} failed after {attempt} attempts: {error}";

    /// <summary><see cref="LeaseExpiredTemplate"/> filled in, as PostgreSQL's format() does.</summary>
    public static string LeaseExpiredError(string task, int attempts)
    {
        var parts = LeaseExpiredTemplate.Split("%s");
        return $"{parts[0]}{task}{parts[1]}{attempts}{parts[2]}";
    }
}
