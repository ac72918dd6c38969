using MergeCluster.Cluster;
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using MergeCluster.Cluster.Client;
using MergeCluster.Cluster.Contracts;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster status [JOB] [--json]`: a job's state and tasks, or recent jobs and live silos; never shows a credential.</summary>
public static class StatusCommand
{
    private const int RecentJobs = 20;

    public static Command Create()
    {
        var job = new Argument<long?>("JOB") { Description = "show this job in detail", Arity = ArgumentArity.ZeroOrOne };
        var json = new Option<bool>("--json") { Description = "one JSON object on stdout" };
        var cluster = new ClusterOptions();
        var command = new Command("status", "show a job, or recent jobs and live silos");
        command.Arguments.Add(job);
        command.Options.Add(json);
        cluster.AddTo(command);
        command.SetAction(async (parse, ct) =>
        {
            await using var connection = await cluster.ConnectAsync(parse, "status", ct);
            bool asJson = parse.GetValue(json);
            if (parse.GetValue(job) is { } id)
            {
                var status = await connection.StatusAsync(id);
                if (asJson) Console.WriteLine(ToJson(status).ToJsonString(JsonOptions));
                else PrintJob(connection, status);
                return 0;
            }
            var silos = await connection.SilosAsync();
            var jobs = new List<JobStatus>();
            foreach (long recent in await connection.RecentJobsAsync(RecentJobs)) jobs.Add(await connection.StatusAsync(recent));
            if (asJson)
            {
                var root = new JsonObject
                {
                    ["jobs"] = new JsonArray([.. jobs.Select(j => (JsonNode)ToJson(j))]),
                    ["silos"] = new JsonArray([.. silos.Select(s => (JsonNode)new JsonObject
                    {
                        ["name"] = s.Name, ["address"] = s.Address, ["status"] = s.Status, ["threads"] = s.Threads, ["models"] = s.Models,
                    })]),
                };
                Console.WriteLine(root.ToJsonString(JsonOptions));
                return 0;
            }
            Console.WriteLine($"storage: {connection.Settings.Storage.Display}; cluster {connection.Settings.ClusterId}");
            Console.WriteLine($"silos: {silos.Length} live");
            foreach (var s in silos) Console.WriteLine($"  {Terminal.Escape(s.Name),-20} {Terminal.Escape(s.Address)}  {s.Threads} slot(s)  {s.Models} model(s)");
            Console.WriteLine($"jobs: {jobs.Count} most recent");
            foreach (var j in jobs)
                Console.WriteLine($"  {j.Job,6}  {StateName(j.State),-9}  {j.Tasks.Done}/{j.Tasks.Total} tasks  submitted {j.SubmittedAt:u}"
                    + (j.Error is null || j.State == JobPhase.Succeeded ? "" : $"  error: {Terminal.Escape(j.Error)}"));
            return 0;
        });
        return command;
    }

    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = false };

    public static string StateName(JobPhase state) => state.ToString().ToLowerInvariant();

    /// <summary>The contract's object: job, state, tasks by state, error, and the rest of what is known.</summary>
    public static JsonObject ToJson(JobStatus s) => new()
    {
        ["job"] = s.Job,
        ["state"] = StateName(s.State),
        ["kind"] = s.Kind,
        ["tasks"] = new JsonObject { ["pending"] = s.Tasks.Pending, ["running"] = s.Tasks.Running, ["done"] = s.Tasks.Done, ["failed"] = s.Tasks.Failed },
        ["error"] = s.Error,
        ["cleaning_up"] = s.CleaningUp,
        ["submitted"] = s.SubmittedAt?.ToString("O", CultureInfo.InvariantCulture),
        ["finished"] = s.FinishedAt?.ToString("O", CultureInfo.InvariantCulture),
        ["output"] = s.Output,
        ["shape"] = s.Shape?.ToLowerInvariant(),
        ["coordinator"] = s.Coordinator,
        ["retries"] = s.Retries,
        ["bytes_read"] = s.BytesRead,
        ["bytes_written"] = s.BytesWritten,
        ["storage_writes"] = s.StorageWrites,
        ["notable_tasks"] = new JsonArray([.. s.Notable.Select(t => (JsonNode)new JsonObject
        {
            ["name"] = t.Name, ["kind"] = t.Kind, ["state"] = t.State, ["attempts"] = t.Attempts, ["silo"] = t.Silo, ["error"] = t.Error,
        })]),
    };

    private static void PrintJob(ClusterConnection connection, JobStatus s)
    {
        Console.WriteLine($"storage: {connection.Settings.Storage.Display}; cluster {connection.Settings.ClusterId}");
        Console.WriteLine($"job {s.Job}: {s.Kind}, {StateName(s.State)}{(s.CleaningUp ? " (cleaning up)" : "")}");
        if (s.RecipeDirectory is not null) Console.WriteLine($"  recipe directory: {Terminal.Escape(s.RecipeDirectory)}");
        if (s.Output is not null) Console.WriteLine($"  output: {Terminal.Escape(s.Output)} ({s.Shape?.ToLowerInvariant()} tasks)");
        Console.WriteLine($"  submitted {s.SubmittedAt:u}{(s.FinishedAt is { } f && s.SubmittedAt is { } b ? $", finished {f:u} after {(f - b).TotalSeconds:0.0} s" : "")}");
        if (s.Coordinator is not null) Console.WriteLine($"  job grain on silo: {Terminal.Escape(s.Coordinator)}");
        if (s.Error is not null && s.State != JobPhase.Succeeded) Console.WriteLine($"  error: {Terminal.Escape(s.Error)}");
        var t = s.Tasks;
        Console.WriteLine($"tasks: {t.Total} ({t.Pending} pending, {t.Running} running, {t.Done} done, {t.Failed} failed); {s.Retries} retries");
        Console.WriteLine($"bytes: {s.BytesRead} read, {s.BytesWritten} written; job record written to storage {s.StorageWrites} times");
        foreach (var n in s.Notable)
            Console.WriteLine($"  {Terminal.Escape(n.Name),-16} {n.State,-7} attempts {n.Attempts}  silo {Terminal.Escape(n.Silo ?? "-")}" + (n.Error is null ? "" : $"  error: {Terminal.Escape(n.Error)}"));
    }
}
