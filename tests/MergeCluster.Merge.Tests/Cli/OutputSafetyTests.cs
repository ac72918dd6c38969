using MergeCluster.Merge.Tests.Merging;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Cli;

/// <summary>
/// `merge` in a hostile output directory, as a user with downloaded checkpoints and a shared directory meets it:
/// planted symlinks, inputs reached through links, non-regular files, signals, dead runs' leftovers.
/// </summary>
public class OutputSafetyTests : IDisposable
{
    private readonly TempDirectory _dir = new();
    private readonly Dictionary<string, string?> _env;

    public OutputSafetyTests()
    {
        _env = new() { ["MERGECLUSTER_CACHE"] = _dir.File("cache") };
        Checkpoints.Write(_dir.File("a.safetensors"), 1, DType.F16);
        Checkpoints.Write(_dir.File("b.safetensors"), 2, DType.F16);
    }

    public void Dispose() => _dir.Dispose();

    private string Recipe(string models = "  a: a.safetensors\n  b: b.safetensors\n", string output = "out.safetensors", string name = "recipe.yaml")
    {
        string path = _dir.File(name);
        File.WriteAllText(path, $"models:\n{models}components:\n  all: {{ method: mean, models: [a, b] }}\noutput: {output}\n");
        return path;
    }

    private CliResult Run(params string[] args) => Support.Cli.Run(args, _dir.Path, _env, TimeSpan.FromSeconds(120));

    /// <summary>Temporary files of any run, live or dead: this tool's naming beside the output.</summary>
    private string[] Temporaries() => Directory.GetFiles(_dir.Path, ".*.mc-*").Concat(Directory.GetDirectories(_dir.Path, ".*.mc-*")).ToArray();

    [Fact]
    public void A_symlink_planted_at_a_temporary_name_is_never_written_through()
    {
        File.WriteAllText(_dir.File("victim.txt"), "the victim's file");
        // Where earlier versions put their temporary file, and where a guess at this one's might go.
        foreach (string planted in new[] { ".out.safetensors.job1.tmp", ".out.safetensors.tmp", ".out.safetensors.mc-0000000000000000.tmp" })
            File.CreateSymbolicLink(_dir.File(planted), _dir.File("victim.txt"));

        Run("merge", Recipe(), "--no-hash").EnsureSuccess();

        Assert.Equal("the victim's file", File.ReadAllText(_dir.File("victim.txt")));
        var output = new FileInfo(_dir.File("out.safetensors"));
        Assert.Null(output.LinkTarget);
        using (var merged = SafetensorsFile.Open(output.FullName)) Assert.NotEmpty(merged.Tensors);
        // The planted links are not the tool's files: left alone, not followed, not removed.
        Assert.Equal(_dir.File("victim.txt"), new FileInfo(_dir.File(".out.safetensors.job1.tmp")).LinkTarget);
    }

    [Fact]
    public void An_output_that_is_a_symlink_is_replaced_and_its_target_left_alone()
    {
        File.WriteAllText(_dir.File("victim.txt"), "the victim's file");
        File.CreateSymbolicLink(_dir.File("out.safetensors"), _dir.File("victim.txt"));
        Run("merge", Recipe(), "--no-hash").EnsureSuccess();
        Assert.Equal("the victim's file", File.ReadAllText(_dir.File("victim.txt")));
        Assert.Null(new FileInfo(_dir.File("out.safetensors")).LinkTarget);
    }

    [Theory]
    [InlineData("symlink model")]
    [InlineData("hard-linked model")]
    [InlineData("symlink output")]
    public void An_output_that_is_an_input_under_another_name_is_refused(string how)
    {
        var original = File.ReadAllBytes(_dir.File("a.safetensors"));
        string models = "  a: via.safetensors\n  b: b.safetensors\n", output = "a.safetensors";
        switch (how)
        {
            case "symlink model": File.CreateSymbolicLink(_dir.File("via.safetensors"), _dir.File("a.safetensors")); break;
            case "hard-linked model": Posix.HardLink(_dir.File("a.safetensors"), _dir.File("via.safetensors")); break;
            default:
                (models, output) = ("  a: a.safetensors\n  b: b.safetensors\n", "out-link.safetensors");
                File.CreateSymbolicLink(_dir.File("out-link.safetensors"), _dir.File("a.safetensors"));
                break;
        }
        var r = Run("merge", Recipe(models), "-o", _dir.File(output), "--no-hash");
        r.AssertOneLineError(output, "model 'a'");
        Assert.Equal(original, File.ReadAllBytes(_dir.File("a.safetensors")));
        Assert.Empty(Temporaries());
        // A dry run says the same before anything could be written.
        Run("merge", Recipe(models), "-o", _dir.File(output), "--dry-run").AssertOneLineError("model 'a'");
    }

    [Theory]
    [InlineData("model")]
    [InlineData("recipe")]
    [InlineData("replayed file")]
    public void A_fifo_is_refused_at_once_instead_of_blocking(string what)
    {
        Posix.Fifo(_dir.File("pipe.safetensors"));
        var r = what switch
        {
            "model" => Run("merge", Recipe("  a: a.safetensors\n  b: pipe.safetensors\n"), "--no-hash"),
            "recipe" => Run("merge", _dir.File("pipe.safetensors")),
            _ => Run("merge", "--from-metadata", _dir.File("pipe.safetensors"), "-o", _dir.File("out.safetensors")),
        };
        r.AssertOneLineError("pipe.safetensors", "FIFO");
        Assert.Contains("FIFO", Run("inspect", _dir.File("pipe.safetensors")).Stderr);
    }

    [Theory]
    [InlineData(2, 130, "SIGINT")]
    [InlineData(15, 143, "SIGTERM")]
    [InlineData(1, 129, "SIGHUP")]
    public async Task A_signal_while_inputs_are_hashed_stops_at_once_says_so_and_leaves_nothing(int signal, int exit, string name)
    {
        // 16 GB of holes: hashing them takes many seconds, so the signal lands while the hash runs.
        Posix.SparseCheckpoint(_dir.File("big.safetensors"), 16L << 30);
        File.WriteAllText(_dir.File("out.safetensors"), "the previous merge");
        File.WriteAllText(_dir.File("recipe.yaml"), "models:\n  big: big.safetensors\ncomponents:\n  all: { method: mean, models: [big] }\noutput: out.safetensors\n");
        Posix.UnignoreForChildren(signal);
        using var merge = Support.Cli.Start(["merge", _dir.File("recipe.yaml")], _dir.Path, _env);
        await merge.WaitForStderrAsync("merge: hashing", TimeSpan.FromMinutes(5));
        merge.Signal(signal);
        var r = await merge.WaitForExitAsync(TimeSpan.FromMinutes(2));

        Assert.Equal(exit, r.ExitCode);
        Assert.Equal($"error: interrupted ({name}); existing output files were left untouched and temporary files removed", r.StderrLines[^1]);
        Assert.Equal("the previous merge", File.ReadAllText(_dir.File("out.safetensors")));
        Assert.Empty(Temporaries());
        // The hash stopped where it was: nothing of it reached the cache.
        Assert.False(File.Exists(_dir.File("cache/hashes.tsv")) && File.ReadAllText(_dir.File("cache/hashes.tsv")).Contains("big.safetensors"));
    }

    [Fact]
    public async Task A_run_killed_with_sigkill_leaves_a_temporary_file_that_the_next_run_removes()
    {
        Posix.SparseCheckpoint(_dir.File("big.safetensors"), 8L << 30);
        File.WriteAllText(_dir.File("big.yaml"), "models:\n  big: big.safetensors\ncomponents:\n  all: { method: copy, model: big }\noutput: big-out.safetensors\n");
        using (var merge = Support.Cli.Start(["merge", _dir.File("big.yaml"), "--no-hash"], _dir.Path, _env))
        {
            // The temporary output exists from the end of planning until the rename.
            var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(5);
            while (Temporaries().Length == 0 && DateTime.UtcNow < deadline) await Task.Delay(20);
            merge.Signal(9);
            await merge.WaitForExitAsync(TimeSpan.FromMinutes(1));
        }
        string stale = Assert.Single(Temporaries());
        Assert.Matches(@"/\.big-out\.safetensors\.mc-[0-9a-f]{16}\.tmp$", stale);

        Run("merge", Recipe(), "--no-hash").EnsureSuccess();
        Assert.Empty(Temporaries());
    }

    [Fact]
    public void Only_dead_runs_regular_temporary_files_are_removed()
    {
        string dead = _dir.File(".other.safetensors.mc-00000000000000aa.tmp");
        string live = _dir.File(".other.safetensors.mc-00000000000000bb.tmp");
        string link = _dir.File(".other.safetensors.mc-00000000000000cc.tmp");
        string fifo = _dir.File(".other.safetensors.mc-00000000000000dd.tmp");
        string job = _dir.File(".other.safetensors.mc-job3-00000000000000ee.tmp");
        string foreign = _dir.File(".other.safetensors.tmp");
        foreach (string f in new[] { dead, live, job, foreign }) File.WriteAllText(f, "x");
        File.WriteAllText(_dir.File("victim.txt"), "the victim's file");
        File.CreateSymbolicLink(link, _dir.File("victim.txt"));
        Posix.Fifo(fifo);
        // A live run holds its lock for as long as its file exists.
        using var handle = RegularFile.OpenRead(live);
        Assert.True(RegularFile.TryLock(handle));

        Run("merge", Recipe(), "--no-hash").EnsureSuccess();

        Assert.False(File.Exists(dead));
        foreach (string kept in new[] { live, job, foreign, fifo }) Assert.True(Path.Exists(kept), kept);
        Assert.Equal(_dir.File("victim.txt"), new FileInfo(link).LinkTarget);
        Assert.Equal("the victim's file", File.ReadAllText(_dir.File("victim.txt")));
    }

    [Fact]
    public void An_output_name_of_247_characters_works()
    {
        string name = new string('m', 235) + ".safetensors";
        Assert.Equal(247, name.Length);
        Run("merge", Recipe(output: name), "--no-hash").EnsureSuccess();
        using var merged = SafetensorsFile.Open(_dir.File(name));
        Assert.NotEmpty(merged.Tensors);
    }

    [Theory]
    [InlineData("-o")]
    [InlineData("output.path")]
    public void A_pickle_output_is_refused_before_any_work(string how)
    {
        var r = how == "-o" ? Run("merge", Recipe(), "-o", _dir.File("x.ckpt")) : Run("merge", Recipe(output: "x.ckpt"));
        r.AssertOneLineError("x.ckpt", "pickle");
        Assert.False(File.Exists(_dir.File("x.ckpt")));
        Assert.Empty(Temporaries());
    }

    [Fact]
    public void A_nul_in_a_path_is_one_line()
    {
        var r = Run("merge", Recipe("  a: \"a\\0.safetensors\"\n  b: b.safetensors\n"));
        r.AssertOneLineError("recipe.yaml:2:", "NUL");
        Assert.Equal(1, r.ExitCode);
    }
}
