using System.Text.Json;
using MergeCluster.Cluster.Contracts;
using MergeCluster.Cluster.Tests.Infrastructure;
using Xunit.Abstractions;

namespace MergeCluster.Cluster.Tests;

/// <summary>
/// `submit --kind distance` and `submit --kind sweep` on real silo processes and real Azurite: the distance map's
/// distances.json is the local `distance` output bit for bit on one silo and on three, and every sweep candidate is
/// the local `sweep`'s file byte for byte.
/// </summary>
[Collection(ProcessTests.Name)]
public sealed class SelectionJobTests(ITestOutputHelper output)
{
    private static readonly string[] OneThread = ["--threads", "1"];

    private static string[] Models(ClusterFixture cluster) => [.. Enumerable.Range(1, 4).Select(i => cluster.Root.File($"models/m{i}.safetensors"))];

    [Fact]
    public async Task A_distance_job_writes_the_local_report_bit_for_bit_on_one_silo_and_on_three()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        await MergeInputs.WriteAsync(cluster.Root);
        string[] options = ["--base", cluster.Root.File("models/m0.safetensors"), "--blocks", "--shard-mb", "1"];
        var local = await MergeClusterCli.RunAsync(null, ["distance", .. Models(cluster), .. options, "-o", cluster.Root.File("local"), "--threads", "2"]);
        Assert.True(local.ExitCode == 0, local.Output);
        var expected = await File.ReadAllBytesAsync(cluster.Root.File("local/distances.json"));
        var files = Directory.GetFiles(cluster.Root.File("local")).Select(f => Path.GetFileName(f)).Order().ToArray();
        Assert.Contains("unet-heatmap.png", files);

        await cluster.StartSiloAsync("s1", OneThread);
        foreach (var (dir, silos) in new[] { ("one", 1), ("three", 3) })
        {
            for (int i = cluster.Silos.Count; i < silos; i++) await cluster.StartSiloAsync($"s{i + 1}", OneThread);
            await Poll.UntilAsync(async () => (await (await cluster.ClientAsync()).SilosAsync()).Length == silos, $"{silos} silos are announced");
            var submit = await cluster.CliAsync(["submit", "--kind", "distance", .. Models(cluster), .. options, "-o", cluster.Root.File(dir), "--wait"]);
            Assert.True(submit.ExitCode == 0, submit.Output + cluster.AllSiloOutput);
            long id = long.Parse(submit.Stdout.Split('\n')[0].Trim());

            Assert.Equal(expected, await File.ReadAllBytesAsync(cluster.Root.File($"{dir}/distances.json")));
            // The CSVs and plots as locally, and nothing else: the partials went with the job's scratch directory.
            Assert.Equal(files, Directory.GetFileSystemEntries(cluster.Root.File(dir)).Select(Path.GetFileName).Order().ToArray());
            foreach (var csv in files.Where(f => f.EndsWith(".csv", StringComparison.Ordinal)))
                Assert.Equal(await File.ReadAllTextAsync(cluster.Root.File($"local/{csv}")), await File.ReadAllTextAsync(cluster.Root.File($"{dir}/{csv}")));

            var status = await cluster.CliAsync("status", id.ToString(), "--json");
            using var json = JsonDocument.Parse(status.Stdout);
            Assert.Equal("distance", json.RootElement.GetProperty("kind").GetString());
            int tasks = json.RootElement.GetProperty("tasks").GetProperty("done").GetInt32();
            int ran = cluster.Silos.Count(s => s.Output.Contains($"job {id} task s"));
            output.WriteLine($"{dir}: {tasks} tasks on {ran} of {silos} silos");
            Assert.True(tasks >= 3, status.Stdout);
            // The work was spread: with three silos of one slot each, the first tasks go to different silos.
            Assert.True(ran >= Math.Min(silos, 2), $"{ran} silos ran tasks");
        }
    }

    [Fact]
    public async Task A_sweep_job_writes_every_local_candidate_byte_for_byte_and_nothing_else()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        string recipe = await MergeInputs.WriteAsync(cluster.Root);
        string dir = cluster.Root.File("out/sweep");
        var local = await MergeClusterCli.RunAsync(null, "sweep", recipe, "--leave-one-out", "unet", "-o", dir, "--threads", "2");
        Assert.True(local.ExitCode == 0, local.Output);
        // The candidates carry their recipe, output path included: the cluster writes them where the local sweep did.
        Directory.Move(dir, cluster.Root.File("local-sweep"));
        var expected = Directory.GetFiles(cluster.Root.File("local-sweep")).Select(f => Path.GetFileName(f)).Order().ToArray();
        Assert.Equal(5, expected.Length);

        await cluster.StartSiloAsync("s1", OneThread);
        await cluster.StartSiloAsync("s2", OneThread);
        var submit = await cluster.CliAsync("submit", "--kind", "sweep", recipe, "--leave-one-out", "unet", "-o", dir, "--shard-mb", "1", "--wait");
        Assert.True(submit.ExitCode == 0, submit.Output + cluster.AllSiloOutput);
        long id = long.Parse(submit.Stdout.Split('\n')[0].Trim());

        Assert.Equal(expected, Directory.GetFileSystemEntries(dir).Select(Path.GetFileName).Order().ToArray());
        foreach (var file in expected)
        {
            var want = await File.ReadAllBytesAsync(cluster.Root.File($"local-sweep/{file}"));
            var got = await File.ReadAllBytesAsync(Path.Combine(dir, file));
            Assert.True(want.AsSpan().SequenceEqual(got), $"{file} differs from the local sweep's");
        }
        var end = await cluster.StatusAsync(id);
        Assert.Equal(("sweep", JobPhase.Succeeded, dir), (end.Kind, end.State, end.Output));
        Assert.True(end.Tasks.Done >= 3, end.ToString());
        Assert.All(new[] { "s1", "s2" }, name => Assert.Contains($"job {id} task s", cluster.Silos.Single(s => s.Name == name).Output));
    }

    [Fact]
    public async Task Kind_options_are_checked_before_anything_is_submitted()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        string recipe = await MergeInputs.WriteAsync(cluster.Root);
        foreach (var (args, error) in new[]
        {
            (new[] { "--kind", "distance", recipe }, "error: submit --kind distance needs -o DIR: where the silos write distances.json, the CSVs and the plots"),
            (["--kind", "sweep", recipe, "-o", "x"], "error: submit --kind sweep needs exactly one of --leave-one-out COMPONENT or --swap COMPONENT"),
            (["--kind", "sweep", recipe, "--swap", "nope"], "error: unknown component 'nope'"),
            ([recipe, "--blocks"], "error: --base, --component and --blocks are options of --kind distance"),
            ([recipe, recipe], "error: submit --kind merge takes one recipe, not 2 arguments"),
            (["--kind", "sweep", recipe, "--leave-one-out", "unet", "--dtype", "f32"], "error: --dtype and --nonfinite are options of --kind merge, not of --kind sweep"),
            (["--kind", "distance", recipe, "-o", "x", "--nonfinite", "error"], "error: --dtype and --nonfinite are options of --kind merge, not of --kind distance"),
            (["--kind", "distance", recipe, "-o", "x", "--no-hash"], "error: --no-hash is an option of --kind merge and --kind sweep: a distance map records no hashes"),
        })
        {
            var r = await cluster.CliAsync(["submit", .. args]);
            Assert.Equal(1, r.ExitCode);
            Assert.StartsWith(error, r.Stderr.Trim());
            Assert.Single(r.Stderr.Trim().Split('\n'));
        }
    }
}
