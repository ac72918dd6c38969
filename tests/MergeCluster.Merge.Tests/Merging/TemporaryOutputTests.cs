using MergeCluster.Engine.Execution;
using MergeCluster.Engine.Ledger;
using MergeCluster.Engine.Runtime;
using MergeCluster.Merge.Recipes;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Merging;

/// <summary>
/// The merge engine's temporary output as job state: planning creates it (exclusively, random name) and records its
/// path and identity in the job's options; tasks and assembly use exactly that file, in this process or another.
/// </summary>
public class TemporaryOutputTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public TemporaryOutputTests()
    {
        for (int i = 0; i < 3; i++) Checkpoints.Write(_dir.File($"m{i}.safetensors"), i + 1, DType.F16);
    }

    public void Dispose() => _dir.Dispose();

    private static JobRecord Job(long id, string recipe, string directory, MergeJobOptions options) =>
        new(id, JobState.Running, recipe, directory, options.ToJson(), "c", null, null, DateTimeOffset.UtcNow, null, null);

    private static async Task RunTasksAsync(MergeJobEngine engine, JobRecord job, JobPlan plan)
    {
        int n = 0;
        foreach (var task in plan.Tasks)
            await engine.RunTaskAsync(job, new TaskLease(job.Id, ++n, task.Name, task.Kind, task.Payload, 1, "s", DateTimeOffset.UtcNow.AddMinutes(5), null), CancellationToken.None);
    }

    /// <summary>The same recipe merged by the embedded default elsewhere (same text, so the same header), byte for byte.</summary>
    private async Task<byte[]> ReferenceAsync(string recipe)
    {
        string dir = Path.Combine(_dir.Path, "reference-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        for (int i = 0; i < 3; i++) Posix.HardLink(_dir.File($"m{i}.safetensors"), Path.Combine(dir, $"m{i}.safetensors"));
        File.WriteAllText(Path.Combine(dir, "recipe.yaml"), recipe);
        string output = await LocalMerge.RunAsync(Recipe.Load(Path.Combine(dir, "recipe.yaml")), new LocalMergeOptions { Threads = 1, HashInputs = false }, null, CancellationToken.None);
        var bytes = File.ReadAllBytes(output);
        Directory.Delete(dir, recursive: true);
        return bytes;
    }

    private const string Models = "models:\n  m0: m0.safetensors\n  m1: m1.safetensors\n  m2: m2.safetensors\n";

    /// <summary>
    /// Two runs over one output, interleaved as two processes can be (both are job 1 of their own ledger): each has its
    /// own temporary file, and each rename puts one whole merge in place.
    /// </summary>
    [Fact]
    public async Task Two_jobs_with_one_output_and_one_job_id_never_share_a_temporary_file()
    {
        string first = Models + "components:\n  all: { method: mean, models: [m0, m1, m2] }\noutput: out.safetensors\n";
        string second = Models + "components:\n  all: { method: weighted_sum, models: [m0, m2], alpha: 0.25 }\noutput: out.safetensors\n";
        byte[] expectFirst = await ReferenceAsync(first), expectSecond = await ReferenceAsync(second);
        var options = new MergeJobOptions { HashInputs = false, Shape = TaskShape.Fused, ShardBytes = 1 << 20 };
        var jobA = Job(1, first, _dir.Path, options);
        var jobB = Job(1, second, _dir.Path, options);
        using var a = new MergeJobEngine(embedded: true);
        using var b = new MergeJobEngine(embedded: true);

        var planA = await a.PlanAsync(jobA, [], CancellationToken.None);
        var planB = await b.PlanAsync(jobB, [], CancellationToken.None);
        jobA = jobA with { Options = planA.Options };
        jobB = jobB with { Options = planB.Options };
        Assert.NotEqual(MergeJobOptions.FromJson(planA.Options).TempOutput, MergeJobOptions.FromJson(planB.Options).TempOutput);

        await RunTasksAsync(a, jobA, planA);
        await RunTasksAsync(b, jobB, planB);
        await a.AssembleAsync(jobA, CancellationToken.None);
        Assert.Equal(expectFirst, File.ReadAllBytes(_dir.File("out.safetensors")));
        await b.AssembleAsync(jobB, CancellationToken.None);
        Assert.Equal(expectSecond, File.ReadAllBytes(_dir.File("out.safetensors")));
        Assert.Empty(Directory.GetFiles(_dir.Path, ".*"));
    }

    /// <summary>A cluster job: another engine (another silo) finds the temporary output only through the job's options, and refuses a file swapped in under its name.</summary>
    [Fact]
    public async Task Other_processes_use_the_temporary_output_the_plan_recorded_and_nothing_put_in_its_place()
    {
        string recipe = Models + "components:\n  all: { method: mean, models: [m0, m1, m2] }\noutput: out.safetensors\n";
        byte[] expected = await ReferenceAsync(recipe);
        var job = Job(5, recipe, _dir.Path, new MergeJobOptions { HashInputs = false, Shape = TaskShape.Fused });
        JobPlan plan;
        using (var coordinator = new MergeJobEngine()) plan = await coordinator.PlanAsync(job, [], CancellationToken.None);
        job = job with { Options = plan.Options };
        string temp = MergeJobOptions.FromJson(plan.Options).TempOutput!;
        Assert.Matches(@"/\.out\.safetensors\.mc-job5-[0-9a-f]{16}\.tmp$", temp);
        Assert.True(File.Exists(temp), "a cluster job's temporary output outlives the process that planned it");

        // Swapped for a symlink to a victim: no silo writes through it.
        File.WriteAllText(_dir.File("victim.txt"), "the victim's file");
        File.Move(temp, temp + ".moved");
        File.CreateSymbolicLink(temp, _dir.File("victim.txt"));
        using (var silo = new MergeJobEngine())
            await Assert.ThrowsAsync<PermanentTaskException>(() => RunTasksAsync(silo, job, plan));
        Assert.Equal("the victim's file", File.ReadAllText(_dir.File("victim.txt")));
        File.Delete(temp);
        File.Move(temp + ".moved", temp);

        using (var silo = new MergeJobEngine()) await RunTasksAsync(silo, job, plan);
        using (var assembler = new MergeJobEngine()) await assembler.AssembleAsync(job, CancellationToken.None);
        Assert.Equal(expected, File.ReadAllBytes(_dir.File("out.safetensors")));
        Assert.False(File.Exists(temp));
    }

    [Fact]
    public async Task Cleanup_removes_the_temporary_output_and_scratch_the_plan_recorded()
    {
        string recipe = Models + "components:\n  all: { method: mean, models: [m0, m1, m2] }\noutput: out.safetensors\nreduce: { group: 1 }\n";
        var job = Job(9, recipe, _dir.Path, new MergeJobOptions { HashInputs = false, Shape = TaskShape.Tree });
        JobPlan plan;
        using (var coordinator = new MergeJobEngine()) plan = await coordinator.PlanAsync(job, [], CancellationToken.None);
        var options = MergeJobOptions.FromJson(plan.Options);
        Assert.True(File.Exists(options.TempOutput) && Directory.Exists(options.Scratch));
        using (var other = new MergeJobEngine()) await other.CleanupAsync(job with { Options = plan.Options }, CancellationToken.None);
        Assert.Empty(Directory.EnumerateFileSystemEntries(_dir.Path, ".*"));
    }
}
