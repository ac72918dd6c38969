using MergeCluster.Engine.Execution;
using MergeCluster.Merge.Recipes;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Merging;

/// <summary>
/// A job's temporary output as job state: planning creates it (exclusively, random name) and records its path and
/// identity in <see cref="MergeJobFiles"/>; tasks, assembly and cleanup use exactly that file, in this process or another.
/// </summary>
public class TemporaryOutputTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public TemporaryOutputTests()
    {
        for (int i = 0; i < 3; i++) Checkpoints.Write(_dir.File($"m{i}.safetensors"), i + 1, DType.F16);
    }

    public void Dispose() => _dir.Dispose();

    private const string Models = "models:\n  m0: m0.safetensors\n  m1: m1.safetensors\n  m2: m2.safetensors\n";

    private Recipe Recipe(string text) => Merge.Recipes.Recipe.Parse(text, _dir.Path, "r.yaml");

    private static void RunTasks(MergeJob job)
    {
        using var run = job.OpenRun();
        foreach (var task in job.Tasks) run.Run(task, attempt: 1, CancellationToken.None);
    }

    /// <summary>The same recipe merged by the embedded default elsewhere (same text, so the same header), byte for byte.</summary>
    private async Task<byte[]> ReferenceAsync(string recipe)
    {
        string dir = Path.Combine(_dir.Path, "reference-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        for (int i = 0; i < 3; i++) Posix.HardLink(_dir.File($"m{i}.safetensors"), Path.Combine(dir, $"m{i}.safetensors"));
        File.WriteAllText(Path.Combine(dir, "recipe.yaml"), recipe);
        string output = await LocalMerge.RunAsync(Merge.Recipes.Recipe.Load(Path.Combine(dir, "recipe.yaml")), new LocalMergeOptions { Threads = 1, HashInputs = false }, null, CancellationToken.None);
        var bytes = File.ReadAllBytes(output);
        Directory.Delete(dir, recursive: true);
        return bytes;
    }

    /// <summary>
    /// Two runs over one output, interleaved as two processes can be: each has its own temporary file, and each rename
    /// puts one whole merge in place.
    /// </summary>
    [Fact]
    public async Task Two_jobs_with_one_output_never_share_a_temporary_file()
    {
        string first = Models + "components:\n  all: { method: mean, models: [m0, m1, m2] }\noutput: out.safetensors\n";
        string second = Models + "components:\n  all: { method: weighted_sum, models: [m0, m2], alpha: 0.25 }\noutput: out.safetensors\n";
        byte[] expectFirst = await ReferenceAsync(first), expectSecond = await ReferenceAsync(second);
        var options = new MergeJobOptions { HashInputs = false, Shape = TaskShape.Fused, ShardBytes = 1 << 20 };

        using var a = MergeJob.Create(Recipe(first), options, new JobEnvironment(), []);
        using var b = MergeJob.Create(Recipe(second), options, new JobEnvironment(), []);
        Assert.NotEqual(a.Files.TempOutput, b.Files.TempOutput);
        RunTasks(a);
        RunTasks(b);
        a.Assemble();
        Assert.Equal(expectFirst, File.ReadAllBytes(_dir.File("out.safetensors")));
        b.Assemble();
        Assert.Equal(expectSecond, File.ReadAllBytes(_dir.File("out.safetensors")));
        Assert.Empty(Directory.GetFiles(_dir.Path, ".*"));
    }

    /// <summary>A cluster job: another machine finds the temporary output only through the job's files, and refuses a file swapped in under its name.</summary>
    [Fact]
    public async Task Other_machines_use_the_temporary_output_the_plan_recorded_and_nothing_put_in_its_place()
    {
        string text = Models + "components:\n  all: { method: mean, models: [m0, m1, m2] }\noutput: out.safetensors\n";
        byte[] expected = await ReferenceAsync(text);
        var options = new MergeJobOptions { HashInputs = false, Shape = TaskShape.Fused };
        MergeJobFiles files;
        string digest;
        using (var planned = MergeJob.Create(Recipe(text), options, new JobEnvironment(), [], clusterJob: 5))
            (files, digest) = (planned.Files, planned.Digest);
        Assert.Matches(@"/\.out\.safetensors\.mc-job5-[0-9a-f]{16}\.tmp$", files.TempOutput);
        Assert.True(File.Exists(files.TempOutput), "a cluster job's temporary output outlives the process that planned it");

        // Swapped for a symlink to a victim: no machine writes through it, nor reads a plan from it.
        File.WriteAllText(_dir.File("victim.txt"), "the victim's file");
        File.Move(files.TempOutput, files.TempOutput + ".moved");
        File.CreateSymbolicLink(files.TempOutput, _dir.File("victim.txt"));
        Assert.Throws<SafetensorsException>(() => MergeJob.Open(Recipe(text), options, TaskShape.Fused, files, new JobEnvironment(), digest));
        Assert.Equal("the victim's file", File.ReadAllText(_dir.File("victim.txt")));
        File.Delete(files.TempOutput);
        File.Move(files.TempOutput + ".moved", files.TempOutput);

        using (var silo = MergeJob.Open(Recipe(text), options, TaskShape.Fused, files, new JobEnvironment(), digest)) RunTasks(silo);
        using (var assembler = MergeJob.Open(Recipe(text), options, TaskShape.Fused, files, new JobEnvironment(), digest)) assembler.Assemble();
        Assert.Equal(expected, File.ReadAllBytes(_dir.File("out.safetensors")));
        Assert.False(File.Exists(files.TempOutput));
    }

    [Fact]
    public void Cleanup_removes_the_temporary_output_and_scratch_the_plan_recorded_and_only_those()
    {
        string text = Models + "components:\n  all: { method: mean, models: [m0, m1, m2] }\noutput: out.safetensors\nreduce: { group: 1 }\n";
        MergeJobFiles files;
        using (var planned = MergeJob.Create(Recipe(text), new MergeJobOptions { HashInputs = false, Shape = TaskShape.Tree }, new JobEnvironment(), [], clusterJob: 9))
            files = planned.Files;
        Assert.True(File.Exists(files.TempOutput) && Directory.Exists(files.Scratch));

        // A file that took the name meanwhile is not the plan's: it stays.
        File.Move(files.TempOutput, files.TempOutput + ".moved");
        File.WriteAllText(files.TempOutput, "someone else's file");
        MergeJob.Cleanup(files);
        Assert.Equal("someone else's file", File.ReadAllText(files.TempOutput));
        File.Delete(files.TempOutput);
        File.Move(files.TempOutput + ".moved", files.TempOutput);
        Directory.CreateDirectory(files.Scratch!);

        MergeJob.Cleanup(files);
        Assert.Empty(Directory.EnumerateFileSystemEntries(_dir.Path, ".*"));
    }
}
