using MergeCluster.Cluster.Tests.Infrastructure;
using MergeCluster.Engine.Ledger;
using Xunit.Abstractions;

namespace MergeCluster.Cluster.Tests;

/// <summary>
/// Real <c>mergecluster silo</c> processes over a real PostgreSQL server, running the test engine's jobs through the
/// failures a cluster meets: a silo killed with kill -9, PostgreSQL restarted, a SIGTERM drain, a task that always fails.
/// </summary>
public sealed class SiloProcessTests(ITestOutputHelper output)
{
    /// <summary>Test engine, 2-second leases: a dead silo's work moves on within seconds.</summary>
    private static string[] Args(int threads = 1, params string[] more) => ["--engine", "test", "--threads", threads.ToString(), "--lease", "2", .. more];

    private static readonly string[] TestSilo = Args();

    private static void AssertNoPassword(string text) => Assert.DoesNotContain(PostgresServer.Password, text);

    [Fact]
    public async Task Three_silos_run_a_job_end_to_end_and_status_reports_it_without_the_password()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        await Task.WhenAll(new[] { "s1", "s2", "s3" }.Select(n => cluster.StartSiloAsync(n, Args(threads: 2))));
        var recipe = cluster.WriteRecipe("output = out/merged.bin\nleaves = 12\nleaf_bytes = 20000\nchunk_ms = 10\n");
        Directory.CreateDirectory(cluster.Root.File("out"));

        var submit = await cluster.CliAsync("submit", recipe, "--wait", "--engine", "test");
        Assert.True(submit.ExitCode == 0, submit.Output);
        long id = long.Parse(submit.Stdout.Trim());
        Assert.Contains($"job {id}: succeeded", submit.Stderr);
        Assert.Equal(RuntimeTests.Expected(12, 20000), await File.ReadAllBytesAsync(cluster.Root.File("out/merged.bin")));
        Assert.Equal(["merged.bin"], Directory.GetFileSystemEntries(cluster.Root.File("out")).Select(Path.GetFileName));

        var status = await cluster.CliAsync("status", id.ToString());
        Assert.True(status.ExitCode == 0, status.Output);
        Assert.Contains($"job {id}: succeeded", status.Stdout);
        Assert.Contains("silos: 3 live", status.Stdout);
        Assert.Contains("tasks: 23 (0 pending, 0 leased, 23 done, 0 failed); 0 retries", status.Stdout);
        Assert.Contains("throughput: ", status.Stdout);
        Assert.Contains($"ledger: postgres@127.0.0.1:{cluster.Server.Port}/", status.Stdout);

        // A recipe whose output escapes the data roots is refused, and --wait says so in one line.
        var escaping = cluster.WriteRecipe("output = ../escaped.bin\nleaves = 2\n", "escaping.txt");
        var refused = await cluster.CliAsync("submit", escaping, "--wait", "--engine", "test");
        Assert.Equal(1, refused.ExitCode);
        var error = refused.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Last();
        Assert.Matches(@"^error: job \d+ failed: plan: \.\./escaped\.bin: outside the data roots", error);

        var list = await cluster.CliAsync("status");
        Assert.Contains("succeeded  23/23 tasks", list.Stdout);
        Assert.Contains("failed     0/0 tasks", list.Stdout);
        var cancel = await cluster.CliAsync("cancel", id.ToString());
        Assert.Equal((1, $"error: job {id}: already succeeded"), (cancel.ExitCode, cancel.Stderr.Trim()));

        foreach (var text in new[] { submit.Output, status.Output, refused.Output, list.Output, cluster.AllSiloOutput }) AssertNoPassword(text);
    }

    [Fact]
    public async Task A_silo_killed_mid_task_loses_its_lease_and_the_job_still_succeeds()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        // s1 starts alone so that it coordinates the job and takes leaf0, which never finishes on s1.
        var s1 = await cluster.StartSiloAsync("s1", TestSilo);
        long id = await cluster.SubmitAsync(cluster.WriteRecipe("output = out.bin\nleaves = 6\nstall = leaf0@s1\n"));
        await cluster.WaitForTaskAsync(id, "leaf0", TaskState.Leased, "s1");
        Assert.Equal("s1", (await cluster.Client.GetJobAsync(id, default))!.Coordinator);
        await Task.WhenAll(cluster.StartSiloAsync("s2", TestSilo), cluster.StartSiloAsync("s3", TestSilo));

        s1.Kill();
        var job = await cluster.WaitForJobEndAsync(id);

        Assert.True(job.State == JobState.Succeeded, job.Error);
        var leaf0 = await cluster.TaskAsync(id, "leaf0");
        Assert.Equal(2, leaf0.Attempts);
        Assert.NotEqual("s1", leaf0.Silo);
        Assert.Contains($"coordinating job {id} (Running)", cluster.AllSiloOutput); // another silo took the job over
        Assert.DoesNotContain("drained", s1.Output);
        Assert.Equal(RuntimeTests.Expected(6, 4096), await File.ReadAllBytesAsync(cluster.Root.File("out.bin")));
    }

    [Fact]
    public async Task Silos_ride_out_a_postgres_restart_mid_job()
    {
        await using var server = await PostgresServer.StartAsync();
        await using var cluster = await ClusterFixture.CreateAsync(output, server);
        await Task.WhenAll(new[] { "s1", "s2", "s3" }.Select(n => cluster.StartSiloAsync(n, TestSilo)));
        // leaf3 waits for a flag file, so the job is certainly in flight while the server is down.
        long id = await cluster.SubmitAsync(cluster.WriteRecipe("output = out.bin\nleaves = 8\nchunk_ms = 5\ngate = leaf3:go.flag\n"));
        await Poll.UntilAsync(async () => (await cluster.Client.ListTasksAsync(id, default)).Any(t => t is { Name: "leaf3", State: TaskState.Leased }), "leaf3 runs");

        await server.RestartAsync(down: TimeSpan.FromSeconds(1));
        await File.WriteAllTextAsync(cluster.Root.File("go.flag"), "");
        var job = await cluster.WaitForJobEndAsync(id);

        Assert.True(job.State == JobState.Succeeded, job.Error);
        Assert.Equal(RuntimeTests.Expected(8, 4096), await File.ReadAllBytesAsync(cluster.Root.File("out.bin")));
        Assert.Contains("listener disconnected", cluster.AllSiloOutput);
        Assert.All(cluster.Silos, s => Assert.False(s.HasExited, $"{s.Name} exited:\n{s.Output}"));
        AssertNoPassword(cluster.AllSiloOutput);
    }

    [Fact]
    public async Task Sigterm_drains_a_silo_it_releases_its_task_exits_zero_and_the_job_succeeds()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        var s1 = await cluster.StartSiloAsync("s1", Args(1, "--drain-grace", "0"));
        long id = await cluster.SubmitAsync(cluster.WriteRecipe("output = out.bin\nleaves = 4\nstall = leaf0@s1\n"));
        await cluster.WaitForTaskAsync(id, "leaf0", TaskState.Leased, "s1");
        await cluster.StartSiloAsync("s2", TestSilo);

        s1.Terminate();
        Assert.Equal(0, await s1.WaitForExitAsync());
        Assert.Contains($"released job {id} task leaf0 (attempt 1)", s1.Output);
        Assert.Contains("drained and left", s1.Output);
        Assert.Equal(["s2"], (await cluster.Client.LiveSilosAsync(TimeSpan.FromMinutes(5), default)).Select(s => s.Name));

        var job = await cluster.WaitForJobEndAsync(id);
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var leaf0 = await cluster.TaskAsync(id, "leaf0");
        Assert.Equal((1, "s2"), (leaf0.Attempts, leaf0.Silo)); // the release did not cost an attempt
        Assert.Equal(RuntimeTests.Expected(4, 4096), await File.ReadAllBytesAsync(cluster.Root.File("out.bin")));
    }

    [Fact]
    public async Task A_deterministically_failing_task_fails_the_job_after_three_attempts_with_the_error_in_status()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        await Task.WhenAll(cluster.StartSiloAsync("s1", TestSilo), cluster.StartSiloAsync("s2", TestSilo));
        var submit = await cluster.CliAsync("submit", cluster.WriteRecipe("output = out.bin\nleaves = 4\nfail = leaf1\n"), "--wait", "--engine", "test");
        Assert.Equal(1, submit.ExitCode);
        long id = long.Parse(submit.Stdout.Trim());
        const string error = "task leaf1 failed after 3 attempts: leaf1: read error (injected by the test recipe)";
        Assert.EndsWith($"error: job {id} failed: {error}", submit.Stderr.Trim());

        var job = await cluster.WaitForJobEndAsync(id);
        Assert.Equal(JobState.Failed, job.State);
        var status = await cluster.CliAsync("status", id.ToString());
        Assert.Contains($"job {id}: failed", status.Stdout);
        Assert.Contains($"error: {error}", status.Stdout);
        Assert.Matches(@"leaf1\s+failed\s+attempts 3", status.Stdout);
        Assert.Equal(3, cluster.AllSiloOutput.Split('\n').Count(l => l.Contains($"failed job {id} task leaf1")));
        Assert.False(Directory.Exists(cluster.Root.File($".mergecluster-job{id}")));
    }

    [Fact]
    public async Task Cli_errors_are_one_line_without_the_password()
    {
        var unreachable = await MergeClusterCli.RunAsync($"Host=127.0.0.1;Port=1;Username=postgres;Password={PostgresServer.Password}", "status");
        Assert.Equal(1, unreachable.ExitCode);
        Assert.Matches(@"^error: ledger postgres@127\.0\.0\.1:1/postgres: .+$", unreachable.Stderr.TrimEnd());
        Assert.Single(unreachable.Stderr.Trim().Split('\n'));

        var invalid = await MergeClusterCli.RunAsync($"Host=h;Port=nope;Password={PostgresServer.Password}", "cancel", "3");
        Assert.Equal((1, true), (invalid.ExitCode, invalid.Stderr.StartsWith("error: invalid ledger connection string")));

        using var temp = new TempDirectory();
        File.WriteAllText(temp.File("recipe.txt"), "output = out.bin\n");
        var none = await MergeClusterCli.RunAsync(null, "submit", temp.File("recipe.txt"), "--engine", "test");
        Assert.Equal((1, "error: no ledger given: pass --ledger CONNECTION or set MERGECLUSTER_LEDGER"), (none.ExitCode, none.Stderr.Trim()));

        var server = await PostgresServer.Shared;
        var missing = await MergeClusterCli.RunAsync(server.ConnectionString(), "status", "424242");
        Assert.Equal((1, "error: job 424242: no such job"), (missing.ExitCode, missing.Stderr.Trim()));

        var badRoot = await MergeClusterCli.RunAsync(server.ConnectionString(), "silo", "--engine", "test", "--data-root", "/nonexistent/root");
        Assert.Equal((1, "error: data root /nonexistent/root: not a directory"), (badRoot.ExitCode, badRoot.Stderr.Trim()));

        foreach (var result in new[] { unreachable, invalid, none, missing, badRoot }) AssertNoPassword(result.Output);
    }
}
