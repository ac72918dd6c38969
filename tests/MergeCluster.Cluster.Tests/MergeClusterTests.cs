using MergeCluster.Cluster.Tests.Infrastructure;
using MergeCluster.Engine.Ledger;
using Xunit.Abstractions;

namespace MergeCluster.Cluster.Tests;

/// <summary>
/// Real merges on real `mergecluster silo` processes over real PostgreSQL: the cluster's output must be the local
/// merge's output bit for bit, also when a silo dies in the middle of a task.
/// </summary>
public sealed class MergeClusterTests(ITestOutputHelper output)
{
    private static readonly string[] SiloArgs = ["--threads", "1", "--lease", "3"];

    /// <summary>Five small SDXL-structured models (one bf16, one pruned) and a recipe whose tree has three leaves.</summary>
    private static async Task<string> WriteModelsAndRecipeAsync(ClusterFixture cluster, string outputName)
    {
        Directory.CreateDirectory(cluster.Root.File("models"));
        Directory.CreateDirectory(cluster.Root.File("out"));
        var synth = new List<Task<ProcessRunner.Result>>();
        for (int i = 0; i < 5; i++)
        {
            var extra = i switch
            {
                2 => new[] { "--dtype", "bf16" },
                3 => new[] { "--drop-prefix", "first_stage_model." },
                _ => Array.Empty<string>(),
            };
            synth.Add(MergeClusterCli.RunAsync(null, ["synth", "--arch", "sdxl", "--seed", i.ToString(), "--scale", "0.04", .. extra, "-o", cluster.Root.File($"models/m{i}.safetensors")]));
        }
        foreach (var r in await Task.WhenAll(synth)) Assert.True(r.ExitCode == 0, r.Output);
        return cluster.WriteRecipe($"""
            models:
              base: models/m0.safetensors
              m1: models/m1.safetensors
              m2: models/m2.safetensors
              m3: models/m3.safetensors
              m4: models/m4.safetensors
            base: base
            components:
              unet: {"{"} method: mean, models: [m1, m2, m3, m4, base], weights: [1, 1, 2, 1, 0.5] {"}"}
              te0: {"{"} method: mean, models: [m2, m3, m4] {"}"}
              te1: {"{"} method: weighted_sum, models: [m1, m2], alpha: 0.3 {"}"}
            output: {"{"} path: out/{outputName}, dtype: f16 {"}"}
            reduce: {"{"} group: 2 {"}"}

            """, "recipe.yaml");
    }

    private static async Task<byte[]> LocalMergeAsync(ClusterFixture cluster, string recipe)
    {
        var local = await MergeClusterCli.RunAsync(null, "merge", recipe, "-o", cluster.Root.File("out/local.safetensors"), "--threads", "2");
        Assert.True(local.ExitCode == 0, local.Output);
        return await File.ReadAllBytesAsync(cluster.Root.File("out/local.safetensors"));
    }

    [Fact]
    public async Task Three_silos_produce_the_local_merge_bit_for_bit_through_leaf_reduce_and_final_tasks()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        string recipe = await WriteModelsAndRecipeAsync(cluster, "cluster.safetensors");
        await Task.WhenAll(new[] { "s1", "s2", "s3" }.Select(n => cluster.StartSiloAsync(n, SiloArgs)));

        var submit = await cluster.CliAsync("submit", recipe, "--wait", "--shard-mb", "1", "--shape", "tree");
        Assert.True(submit.ExitCode == 0, submit.Output + cluster.AllSiloOutput);
        long id = long.Parse(submit.Stdout.Trim());

        var tasks = await cluster.Client.ListTasksAsync(id, default);
        Assert.Contains(tasks, t => t.Kind == "leaf");
        Assert.Contains(tasks, t => t.Kind == "reduce");
        Assert.Contains(tasks, t => t.Kind == "final");
        Assert.True(tasks.Select(t => t.Silo).Distinct().Count() >= 2, "the work should spread over several silos");

        Assert.Equal(await LocalMergeAsync(cluster, recipe), await File.ReadAllBytesAsync(cluster.Root.File("out/cluster.safetensors")));
        // Scratch partial sums and the temporary output are gone once the job is assembled.
        Assert.Equal(["cluster.safetensors", "local.safetensors"], Directory.GetFileSystemEntries(cluster.Root.File("out")).Select(Path.GetFileName).Order());
    }

    [Fact]
    public async Task A_silo_frozen_then_killed_mid_task_loses_its_lease_and_the_output_is_still_identical()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        string recipe = await WriteModelsAndRecipeAsync(cluster, "cluster.safetensors");
        var victim = await cluster.StartSiloAsync("victim", SiloArgs);
        long id = await cluster.SubmitAsync(recipe, "--shard-mb", "1", "--shape", "tree");

        // Freeze the only silo while it holds a task, so the task is mid-flight when it dies.
        TaskRecord? held = null;
        await Poll.UntilAsync(async () => (held = (await cluster.Client.ListTasksAsync(id, default)).FirstOrDefault(t => t.State == TaskState.Leased)) is not null, "victim holds a task");
        await ProcessRunner.RunAsync("kill", ["-STOP", victim.Pid.ToString()]);
        await Task.WhenAll(new[] { "s2", "s3" }.Select(n => cluster.StartSiloAsync(n, SiloArgs)));
        await Poll.UntilAsync(async () => (await cluster.TaskAsync(id, held!.Name)).Attempts >= 2, $"{held!.Name} is retried after the lease expires");
        victim.Kill();

        var job = await cluster.WaitForJobEndAsync(id);
        Assert.True(job.State == JobState.Succeeded, job.Error + cluster.AllSiloOutput);
        var retried = await cluster.TaskAsync(id, held.Name);
        Assert.NotEqual("victim", retried.Silo);
        Assert.Equal(await LocalMergeAsync(cluster, recipe), await File.ReadAllBytesAsync(cluster.Root.File("out/cluster.safetensors")));
    }

    /// <summary>
    /// A restart (fast shutdown) flushes all that was committed. A crash (immediate shutdown) of a server that commits
    /// synchronously, as in production, loses only the ledger's asynchronous commits, its claims: with the WAL writer
    /// slowed, the claims made just before the crash are usually among them, and their tasks run again.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_merge_rides_out_a_postgres_restart_or_crash_and_still_matches_the_local_merge(bool crash)
    {
        await using var server = await PostgresServer.StartAsync(crash ? "-c synchronous_commit=on -c wal_writer_delay=10000" : "");
        await using var cluster = await ClusterFixture.CreateAsync(output, server);
        string recipe = await WriteModelsAndRecipeAsync(cluster, "cluster.safetensors");
        var silos = await Task.WhenAll(new[] { "s1", "s2" }.Select(n => cluster.StartSiloAsync(n, "--threads", "1", "--lease", "10")));
        long id = await cluster.SubmitAsync(recipe, "--shard-mb", "1", "--shape", "tree");
        TaskRecord? held = null;
        await Poll.UntilAsync(async () => (held = (await cluster.Client.ListTasksAsync(id, default)).FirstOrDefault(t => t.State == TaskState.Leased)) is not null, "a task runs");

        // Frozen silos keep the job in flight while the server goes down and comes back.
        foreach (var s in silos) await ProcessRunner.RunAsync("kill", ["-STOP", s.Pid.ToString()]);
        await server.RestartAsync(down: TimeSpan.FromSeconds(1), crash);
        var after = await cluster.TaskAsync(id, held!.Name);
        output.WriteLine($"{held.Name} after the {(crash ? "crash" : "restart")}: {after.State}, attempt {after.Attempts}");
        foreach (var s in silos) await ProcessRunner.RunAsync("kill", ["-CONT", s.Pid.ToString()]);

        var job = await cluster.WaitForJobEndAsync(id);
        Assert.True(job.State == JobState.Succeeded, job.Error + cluster.AllSiloOutput);
        Assert.All(cluster.Silos, s => Assert.False(s.HasExited, $"{s.Name} exited:\n{s.Output}"));
        Assert.Equal(await LocalMergeAsync(cluster, recipe), await File.ReadAllBytesAsync(cluster.Root.File("out/cluster.safetensors")));
    }

    [Fact]
    public async Task A_recipe_whose_models_escape_the_data_root_is_refused_with_the_path()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        using var outside = new TempDirectory("mergecluster-outside");
        var synth = await MergeClusterCli.RunAsync(null, "synth", "--arch", "sd15", "--seed", "1", "--scale", "0.02", "-o", outside.File("m.safetensors"));
        Assert.True(synth.ExitCode == 0, synth.Output);
        File.CreateSymbolicLink(cluster.Root.File("linked.safetensors"), outside.File("m.safetensors"));
        await cluster.StartSiloAsync("s1", SiloArgs);

        foreach (var path in new[] { outside.File("m.safetensors"), "linked.safetensors" })
        {
            var recipe = cluster.WriteRecipe($"models:\n  a: {path}\ncomponents:\n  all: {{ method: copy, model: a }}\noutput: out.safetensors\n", "escape.yaml");
            var submit = await cluster.CliAsync("submit", recipe, "--wait");
            Assert.Equal(1, submit.ExitCode);
            var error = submit.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Last();
            Assert.Contains("outside the data roots", error);
            Assert.StartsWith("error: job ", error);
        }
        Assert.False(File.Exists(cluster.Root.File("out.safetensors")));
    }
}
