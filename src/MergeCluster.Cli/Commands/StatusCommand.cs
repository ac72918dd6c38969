using System.CommandLine;
using System.Globalization;
using MergeCluster.Cluster.Ledger;
using MergeCluster.Engine.Ledger;
using MergeCluster.Merge;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster status [JOB]`: jobs, tasks by state, live silos and throughput; never shows a credential.</summary>
public static class StatusCommand
{
    /// <summary>A silo counts as live while its heartbeat is younger than this (three default heartbeats).</summary>
    private static readonly TimeSpan LiveWithin = TimeSpan.FromSeconds(30);

    public static Command Create()
    {
        var job = new Argument<long?>("JOB") { Description = "show this job in detail", Arity = ArgumentArity.ZeroOrOne };
        var ledger = LedgerOption.Create();
        var command = new Command("status", "show jobs, tasks by state, live silos and throughput");
        command.Arguments.Add(job);
        command.Options.Add(ledger);
        command.SetAction(async (parse, ct) =>
        {
            await using var client = await LedgerOption.OpenClientAsync(parse.GetValue(ledger), listen: false, ct);
            Console.WriteLine($"ledger: {client.Display}");
            await PrintSilosAsync(client, ct);
            if (parse.GetValue(job) is { } id) await PrintJobAsync(client, id, ct);
            else await PrintJobsAsync(client, ct);
            return 0;
        });
        return command;
    }

    private static async Task PrintSilosAsync(PostgresLedger ledger, CancellationToken ct)
    {
        var silos = await ledger.LiveSilosAsync(LiveWithin, ct);
        Console.WriteLine($"silos: {silos.Count} live");
        foreach (var s in silos)
        {
            var models = s.Models?.Split('\n').Length ?? 0;
            Console.WriteLine($"  {Terminal.Escape(s.Name),-20} {Terminal.Escape(s.Host)}:{s.Pid}  up {Since(s.StartedAt)}  heartbeat {Since(s.Heartbeat)} ago  models {models}");
        }
    }

    private static async Task PrintJobsAsync(PostgresLedger ledger, CancellationToken ct)
    {
        var jobs = await ledger.ListJobsAsync(20, ct);
        Console.WriteLine($"jobs: {jobs.Count} most recent");
        foreach (var j in jobs)
        {
            var counts = await ledger.CountTasksAsync(j.Id, ct);
            Console.WriteLine($"  {j.Id,6}  {State(j.State),-9}  {counts.Done}/{counts.Total} tasks  submitted {j.SubmittedAt:u}"
                + (j.Error is null || j.State == JobState.Succeeded ? "" : $"  error: {Terminal.Escape(j.Error)}"));
        }
    }

    private static async Task PrintJobAsync(PostgresLedger ledger, long id, CancellationToken ct)
    {
        var job = await ledger.GetJobAsync(id, ct) ?? throw new MergeException($"job {id}: no such job");
        var tasks = await ledger.ListTasksAsync(id, ct);
        Console.WriteLine($"job {id}: {State(job.State)}{(job.FinishedAt is null && job.State is JobState.Failed or JobState.Cancelled ? " (cleaning up)" : "")}");
        Console.WriteLine($"  recipe directory: {Terminal.Escape(job.RecipeDirectory)}");
        Console.WriteLine($"  submitted {job.SubmittedAt:u}{(job.FinishedAt is { } f ? $", finished {f:u} after {(f - job.SubmittedAt).TotalSeconds:0.0} s" : "")}");
        if (job.Coordinator is not null) Console.WriteLine($"  coordinator: {Terminal.Escape(job.Coordinator)}");
        if (job.Error is not null && job.State != JobState.Succeeded) Console.WriteLine($"  error: {Terminal.Escape(job.Error)}");
        var byState = Enum.GetValues<TaskState>().Select(s => $"{tasks.Count(t => t.State == s)} {s.ToString().ToLowerInvariant()}");
        Console.WriteLine($"tasks: {tasks.Count} ({string.Join(", ", byState)}); {tasks.Sum(t => Math.Max(0, t.Attempts - 1))} retries");
        Console.WriteLine($"throughput: {Throughput(tasks)}");
        foreach (var t in tasks.Where(t => t.State is TaskState.Leased or TaskState.Failed || t.Attempts > 1))
        {
            Console.WriteLine($"  {Terminal.Escape(t.Name),-16} {t.State.ToString().ToLowerInvariant(),-7} attempts {t.Attempts}  silo {Terminal.Escape(t.Silo ?? "-")}"
                + (t.Error is null ? "" : $"  error: {Terminal.Escape(t.Error)}"));
        }
    }

    /// <summary>Bytes of done tasks over the wall time from the first start to the last finish, and per task on average.</summary>
    private static string Throughput(IReadOnlyList<TaskRecord> tasks)
    {
        var done = tasks.Where(t => t is { State: TaskState.Done, StartedAt: not null, FinishedAt: not null }).ToList();
        if (done.Count == 0) return "no task done yet";
        long bytes = done.Sum(t => t.Bytes);
        var wall = done.Max(t => t.FinishedAt!.Value) - done.Min(t => t.StartedAt!.Value);
        var busy = TimeSpan.FromTicks(done.Sum(t => (t.FinishedAt!.Value - t.StartedAt!.Value).Ticks));
        return $"{Rate(bytes, wall)} over {wall.TotalSeconds:0.0} s for {Size(bytes)} in {done.Count} tasks ({Rate(bytes, busy)} per busy task)";
    }

    private static string Rate(long bytes, TimeSpan time) => time <= TimeSpan.Zero ? "-" : $"{Size((long)(bytes / time.TotalSeconds))}/s";

    private static string Size(long bytes) => bytes switch
    {
        >= 1L << 30 => (bytes / (double)(1L << 30)).ToString("0.00 'GiB'", CultureInfo.InvariantCulture),
        >= 1L << 20 => (bytes / (double)(1L << 20)).ToString("0.0 'MiB'", CultureInfo.InvariantCulture),
        >= 1L << 10 => (bytes / (double)(1L << 10)).ToString("0.0 'KiB'", CultureInfo.InvariantCulture),
        _ => $"{bytes} B",
    };

    private static string Since(DateTimeOffset t) => $"{Math.Max(0, (DateTimeOffset.UtcNow - t).TotalSeconds):0}s";

    private static string State(JobState state) => state.ToString().ToLowerInvariant();
}
