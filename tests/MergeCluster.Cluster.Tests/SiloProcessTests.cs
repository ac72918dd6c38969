using System.Text.Json;
using System.Text.RegularExpressions;
using MergeCluster.Cluster.Contracts;
using MergeCluster.Cluster.Tests.Infrastructure;
using Xunit.Abstractions;

namespace MergeCluster.Cluster.Tests;

/// <summary>
/// Real <c>mergecluster silo</c> processes on real Azurite, through the failures a cluster meets: a silo killed with
/// kill -9 in the middle of a task, the silo holding the job grain killed, storage killed and restarted, a SIGTERM
/// drain. Every merged file must equal the embedded <c>merge</c>'s byte for byte, and the storage key must never show.
/// </summary>
[Collection(ProcessTests.Name)]
public sealed partial class SiloProcessTests(ITestOutputHelper output)
{
    private static readonly string[] OneThread = ["--threads", "1"];
    private static readonly string[] TreeJob = ["--shard-mb", "1", "--shape", "tree"];

    [Fact]
    public async Task Two_silos_merge_the_local_file_bit_for_bit_status_tells_it_and_nothing_shows_the_key()
    {
        await using var otlp = new OtlpCollector();
        await using var cluster = await ClusterFixture.CreateAsync(output);
        string recipe = await MergeInputs.WriteAsync(cluster.Root);
        var s1 = await cluster.StartSiloAsync("s1", otlp.Environment, OneThread);
        var s2 = await cluster.StartSiloAsync("s2", otlp.Environment, OneThread);

        var submit = await cluster.CliAsync(otlp.Environment, ["submit", recipe, "--wait", .. TreeJob]);
        Assert.True(submit.ExitCode == 0, submit.Output + cluster.AllSiloOutput);
        long id = long.Parse(submit.Stdout.Split('\n')[0].Trim());
        Assert.Contains($"job {id}: succeeded", submit.Stderr);
        Assert.Equal(await MergeInputs.LocalMergeAsync(cluster.Root, recipe), await File.ReadAllBytesAsync(cluster.Root.File("out/cluster.safetensors")));
        // The temporary output and every partial sum are gone once the job is assembled.
        Assert.Equal(["cluster.safetensors", "local.safetensors"], Directory.GetFileSystemEntries(cluster.Root.File("out")).Select(Path.GetFileName).Order());
        // Leaves, reduces and finals ran on both silos.
        Assert.Contains($"job {id} task s", s1.Output);
        Assert.Contains($"job {id} task s", s2.Output);

        var status = await cluster.CliAsync("status", id.ToString(), "--json");
        Assert.True(status.ExitCode == 0, status.Output);
        using var job = JsonDocument.Parse(status.Stdout);
        var root = job.RootElement;
        Assert.Equal(id, root.GetProperty("job").GetInt64());
        Assert.Equal("succeeded", root.GetProperty("state").GetString());
        var tasks = root.GetProperty("tasks");
        int done = tasks.GetProperty("done").GetInt32();
        Assert.True(done > 20, status.Stdout);
        Assert.Equal((0, 0, 0), (tasks.GetProperty("pending").GetInt32(), tasks.GetProperty("running").GetInt32(), tasks.GetProperty("failed").GetInt32()));
        Assert.Equal(JsonValueKind.Null, root.GetProperty("error").ValueKind);
        Assert.Equal("tree", root.GetProperty("shape").GetString());
        // No storage write per tensor: the job record is written in batches, at most once per finished task.
        int writes = root.GetProperty("storage_writes").GetInt32();
        output.WriteLine($"{done} tasks, {writes} writes of the job record ({(double)writes / done:0.00} per task)");
        Assert.InRange(writes, 2, done + 2);

        var list = await cluster.CliAsync("status", "--json");
        using var all = JsonDocument.Parse(list.Stdout);
        Assert.Contains(all.RootElement.GetProperty("jobs").EnumerateArray(), j => j.GetProperty("job").GetInt64() == id);
        Assert.Equal(["s1", "s2"], all.RootElement.GetProperty("silos").EnumerateArray().Select(s => s.GetProperty("name").GetString()).Order());
        var text = await cluster.CliAsync("status");
        Assert.Contains("silos: 2 live", text.Stdout);
        Assert.Matches($@"\b{id}\s+succeeded\s+{done}/{done} tasks", text.Stdout);

        var cancel = await cluster.CliAsync("cancel", id.ToString());
        Assert.Equal((1, $"error: job {id}: already succeeded"), (cancel.ExitCode, cancel.Stderr.Trim()));

        // SIGTERM drains through Orleans' graceful shutdown; exporters flush on the way out.
        s1.Terminate();
        Assert.Equal(0, await s1.WaitForExitAsync());
        Assert.Contains("drained and left", s1.Output);
        s2.Terminate();
        Assert.Equal(0, await s2.WaitForExitAsync());

        var traces = otlp.Bodies("/v1/traces");
        Assert.Contains("mergecluster.task", traces);
        Assert.Contains("mergecluster.plan", traces);
        Assert.Contains("mergecluster.job", traces);
        var metrics = otlp.Bodies("/v1/metrics");
        Assert.Contains("mergecluster.tasks", metrics);
        Assert.Contains("mergecluster.silo.tasks.running", metrics);
        Assert.Contains("orleans-", metrics); // the Microsoft.Orleans meter

        foreach (var outputText in new[] { submit.Output, status.Output, list.Output, text.Output, cancel.Output, cluster.AllSiloOutput, otlp.All })
            Assert.DoesNotContain(cluster.Storage.Key, outputText);
    }

    [Fact]
    public async Task A_silo_killed_with_kill_9_mid_task_loses_its_work_to_the_other_and_the_output_is_identical()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        string recipe = await MergeInputs.WriteAsync(cluster.Root);
        var silos = new[] { await cluster.StartSiloAsync("s1", OneThread), await cluster.StartSiloAsync("s2", OneThread) };
        long id = await cluster.SubmitAsync(recipe, TreeJob);

        var status = await cluster.WaitForAsync(id, s => s.Tasks.Done >= 1, "a task is done");
        var victim = silos.Single(s => s.Name != status.Coordinator);
        // Freeze the victim until it is caught in the middle of writing a partial sum: its file is named after its pid.
        string? held = await CatchMidTaskAsync(cluster, victim);
        Assert.True(held is not null, "the victim was never caught mid-task before the job ended");
        victim.Kill();

        var end = await cluster.WaitForJobEndAsync(id);
        Assert.True(end.State == JobPhase.Succeeded, end.Error + cluster.AllSiloOutput);
        var retried = end.Notable.Single(t => t.Name == held);
        Assert.True(retried.Attempts >= 2, $"{held}: {retried}");
        Assert.NotEqual(victim.Name, retried.Silo);
        Assert.Equal(await MergeInputs.LocalMergeAsync(cluster.Root, recipe), await File.ReadAllBytesAsync(cluster.Root.File("out/cluster.safetensors")));
    }

    [Fact]
    public async Task The_silo_holding_the_job_grain_killed_the_job_resumes_elsewhere_and_redoes_no_finished_task()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        string recipe = await MergeInputs.WriteAsync(cluster.Root);
        var silos = new[] { await cluster.StartSiloAsync("s1", OneThread), await cluster.StartSiloAsync("s2", OneThread) };
        long id = await cluster.SubmitAsync(recipe, TreeJob);

        // Frozen, the job grain's silo holds the job back: it cannot end before the kill.
        var status = await cluster.WaitForAsync(id, s => s.Tasks.Total > 0 && s.Tasks.Done >= s.Tasks.Total / 3, "a third of its tasks are done");
        var victim = silos.Single(s => s.Name == status.Coordinator);
        var survivor = silos.Single(s => s != victim);
        victim.Freeze();
        victim.Kill();

        var end = await cluster.WaitForJobEndAsync(id);
        Assert.True(end.State == JobPhase.Succeeded, end.Error + cluster.AllSiloOutput);
        Assert.Equal(await MergeInputs.LocalMergeAsync(cluster.Root, recipe), await File.ReadAllBytesAsync(cluster.Root.File("out/cluster.safetensors")));

        // The job grain came back on the survivor with the done tasks of its record, and ran only the others.
        var resumed = ResumedLine().Match(survivor.Output);
        Assert.True(resumed.Success, survivor.Output);
        Assert.Equal(survivor.Name, resumed.Groups["silo"].Value);
        int recorded = int.Parse(resumed.Groups["done"].Value), total = int.Parse(resumed.Groups["total"].Value);
        Assert.True(recorded > 0, resumed.Value);
        int startedAfter = StartedLine(id).Matches(survivor.Output[resumed.Index..]).Count;
        output.WriteLine($"resumed with {recorded}/{total} done; {startedAfter} task attempts started after that");
        Assert.InRange(startedAfter, 1, total - recorded + 1);
    }

    [Fact]
    public async Task Silos_ride_out_azurite_killed_and_restarted_on_the_same_location_mid_job()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output, ownStorage: true);
        string recipe = await MergeInputs.WriteAsync(cluster.Root);
        var silos = new[] { await cluster.StartSiloAsync("s1", OneThread), await cluster.StartSiloAsync("s2", OneThread) };
        long id = await cluster.SubmitAsync(recipe, TreeJob);
        var status = await cluster.WaitForAsync(id, s => s.Tasks.Done >= 1, "a task is done");

        await cluster.Storage.KillAsync();
        int doneBefore = DoneLines(cluster);
        // Without storage the job grain cannot record progress (it keeps retrying), while tasks go on.
        var coordinator = silos.Single(s => s.Name == status.Coordinator);
        await coordinator.WaitForOutputAsync($"job {id}: storage:", TimeSpan.FromMinutes(2));
        await Poll.UntilAsync(() => DoneLines(cluster) >= doneBefore + 3, "tasks finish while storage is down");
        await cluster.Storage.RestartAsync();

        var end = await cluster.WaitForJobEndAsync(id);
        Assert.True(end.State == JobPhase.Succeeded, end.Error + cluster.AllSiloOutput);
        Assert.All(silos, s => Assert.False(s.HasExited, $"{s.Name} exited:\n{s.Output}"));
        Assert.Equal(await MergeInputs.LocalMergeAsync(cluster.Root, recipe), await File.ReadAllBytesAsync(cluster.Root.File("out/cluster.safetensors")));
        Assert.DoesNotContain(cluster.Storage.Key, cluster.AllSiloOutput);
    }

    [Fact]
    public async Task Paths_outside_the_data_roots_and_corrupt_inputs_fail_the_job_with_the_file_named()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        using var outside = new TempDirectory("mergecluster-outside");
        var synth = await MergeClusterCli.RunAsync(null, "synth", "--arch", "sd15", "--seed", "1", "--scale", "0.02", "-o", outside.File("m.safetensors"));
        Assert.True(synth.ExitCode == 0, synth.Output);
        File.CreateSymbolicLink(cluster.Root.File("linked.safetensors"), outside.File("m.safetensors"));
        await cluster.StartSiloAsync("s1", OneThread);

        foreach (var (path, expected) in new[] { (outside.File("m.safetensors"), outside.File("m.safetensors")), ("linked.safetensors", cluster.Root.File("linked.safetensors")) })
        {
            var recipe = cluster.WriteRecipe($"models:\n  a: {path}\ncomponents:\n  all: {{ method: copy, model: a }}\noutput: out.safetensors\n", "escape.yaml");
            var submit = await cluster.CliAsync("submit", recipe, "--wait");
            Assert.Equal(1, submit.ExitCode);
            var error = submit.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Last();
            Assert.Matches(@"^error: job \d+ failed: plan: ", error);
            Assert.Contains($"{expected}: outside the data roots", error);
        }
        Assert.False(File.Exists(cluster.Root.File("out.safetensors")));

        // A model cut short (a broken download) is found while planning, before any task: its file is named.
        var bytes = await File.ReadAllBytesAsync(outside.File("m.safetensors"));
        await File.WriteAllBytesAsync(cluster.Root.File("short.safetensors"), bytes[..^1000]);
        var broken = cluster.WriteRecipe("models:\n  a: short.safetensors\ncomponents:\n  all: { method: copy, model: a }\noutput: out.safetensors\n", "broken.yaml");
        long id = await cluster.SubmitAsync(broken);
        var end = await cluster.WaitForJobEndAsync(id);
        Assert.Equal(JobPhase.Failed, end.State);
        Assert.StartsWith($"plan: {cluster.Root.File("short.safetensors")}: ", end.Error);
        var status = await cluster.CliAsync("status", id.ToString(), "--json");
        Assert.Contains("short.safetensors", JsonDocument.Parse(status.Stdout).RootElement.GetProperty("error").GetString());
        Assert.DoesNotContain(cluster.Storage.Key, cluster.AllSiloOutput + status.Output);
    }

    [Fact]
    public async Task Cli_errors_are_one_line_and_never_show_the_key()
    {
        var azurite = await Azurite.Shared;
        string key = azurite.Key;
        var results = new List<ProcessRunner.Result>();
        async Task<ProcessRunner.Result> Run(Dictionary<string, string>? env, params string[] args)
        {
            var r = await MergeClusterCli.RunAsync(env, args);
            results.Add(r);
            return r;
        }

        var none = await Run(null, "status");
        Assert.Equal((1, "error: no storage given: pass --storage CONNECTION or set MERGECLUSTER_STORAGE"), (none.ExitCode, none.Stderr.Trim()));

        var invalid = await Run(new() { ["MERGECLUSTER_STORAGE"] = $"AccountName=x;AccountKey={key};BlobEndpoint=not a url;TableEndpoint=also not" }, "cancel", "3");
        Assert.Equal(1, invalid.ExitCode);
        Assert.StartsWith("error: invalid storage connection string", invalid.Stderr);

        var unreachable = await Run(new() { ["MERGECLUSTER_STORAGE"] = $"DefaultEndpointsProtocol=http;AccountName=x;AccountKey={key};BlobEndpoint=http://127.0.0.1:1/x;TableEndpoint=http://127.0.0.1:1/x" }, "status");
        Assert.Equal(1, unreachable.ExitCode);
        Assert.Matches(@"^error: cluster mergecluster: no silo reachable through storage account x, blob http://127\.0\.0\.1:1/x, table http://127\.0\.0\.1:1/x: .+$", unreachable.Stderr.TrimEnd());

        await using var cluster = await ClusterFixture.CreateAsync(output);
        await cluster.StartSiloAsync("s1", OneThread);
        var missing = await cluster.CliAsync("status", "424242");
        results.Add(missing);
        Assert.Equal((1, "error: job 424242: no such job"), (missing.ExitCode, missing.Stderr.Trim()));

        var badRoot = await cluster.CliAsync("silo", "--data-root", "/nonexistent/root");
        results.Add(badRoot);
        Assert.Equal((1, "error: data root /nonexistent/root: not a directory"), (badRoot.ExitCode, badRoot.Stderr.Trim()));

        foreach (var r in results)
        {
            Assert.Single(r.Stderr.Trim().Split('\n'));
            Assert.DoesNotContain(key, r.Output);
        }
    }

    /// <summary>Freezes the silo whenever it is writing a partial sum (a temporary file carrying its pid); else thaws it and looks again.</summary>
    private static async Task<string?> CatchMidTaskAsync(ClusterFixture cluster, SiloProcess silo)
    {
        var mine = new Regex($@"^(s\d+)-l(\d+)-n(\d+)\.partial\.a\d+\.{silo.Pid}\.[0-9a-f]+\.tmp$");
        for (int i = 0; i < 2000; i++)
        {
            silo.Freeze();
            foreach (var file in Directory.EnumerateFiles(cluster.Root.Path, "*.tmp", SearchOption.AllDirectories))
            {
                var m = mine.Match(Path.GetFileName(file));
                if (m.Success) return $"{m.Groups[1].Value}/l{m.Groups[2].Value}n{m.Groups[3].Value}";
            }
            silo.Thaw();
            if (File.Exists(cluster.Root.File("out/cluster.safetensors"))) return null;
            await Task.Delay(10);
        }
        return null;
    }

    private static int DoneLines(ClusterFixture cluster) => Regex.Matches(cluster.AllSiloOutput, @"\(attempt \d+\): done").Count;

    private static Regex StartedLine(long job) => new($@"job {job} task \S+ \(attempt \d+\): started");

    [GeneratedRegex(@"job \d+: resumed on silo (?<silo>\S+) \(Running, (?<done>\d+)/(?<total>\d+) tasks done\)")]
    private static partial Regex ResumedLine();
}

/// <summary>Tests that run real silo processes share the machine's two cores: one at a time.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ProcessTests
{
    public const string Name = "silo processes";
}
