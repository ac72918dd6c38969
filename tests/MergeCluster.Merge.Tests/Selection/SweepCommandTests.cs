using System.Diagnostics;
using MergeCluster.Engine.Selection;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Recipes;
using MergeCluster.Merge.Tests.Merging;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Selection;

/// <summary>`mergecluster sweep`: every candidate is its own recipe's merge, byte for byte, and replays from its metadata.</summary>
public class SweepCommandTests : IDisposable
{
    private readonly TempDirectory _dir = new();
    private readonly Dictionary<string, string?> _env;

    public SweepCommandTests()
    {
        _env = new() { ["MERGECLUSTER_CACHE"] = _dir.File("cache") };
        Checkpoints.Write(_dir.File("base.safetensors"), 100, DType.F16);
        Checkpoints.Write(_dir.File("a.safetensors"), 1, DType.F16);
        Checkpoints.Write(_dir.File("b.safetensors"), 2, DType.BF16, key => !key.StartsWith("first_stage_model.")); // pruned: no VAE
        Checkpoints.Write(_dir.File("c.safetensors"), 3, DType.F32);
        Checkpoints.Write(_dir.File("d.safetensors"), 4, DType.F16);
        File.WriteAllText(_dir.File("mix.yaml"), """
            models:
              base: base.safetensors
              a: a.safetensors
              b: b.safetensors
              c: c.safetensors
              d: d.safetensors
            base: base
            components:
              unet: { method: mean, models: [a, b, c, d, base], weights: [1, 2, 1, 0.5, 1] }   # weighted ensemble
              te0: { method: mean, models: [a, b] }
              te1: { method: ties, models: [a, c, d], k: 0.5, alpha: 0.8 }
              vae: { method: mean, models: [a, b, c] }
            output: { path: mix.safetensors, dtype: bf16 }
            reduce: { group: 2 }
            """);
    }

    public void Dispose() => _dir.Dispose();

    private CliResult Run(params string[] args) => Support.Cli.Run(args, _dir.Path, _env);

    /// <summary>Each candidate against `merge` of the recipe in its metadata, written beside the original, and against a replay.</summary>
    private void AssertEachIsItsOwnMerge(string dir, IReadOnlyList<string> expected)
    {
        var files = Directory.GetFiles(dir).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(expected.Order(StringComparer.Ordinal).ToArray(), files);
        foreach (string file in expected)
        {
            string candidate = Path.Combine(dir, file);
            string recipe;
            using (var f = SafetensorsFile.Open(candidate)) recipe = f.Header.Metadata["mergecluster.recipe"];
            string recipePath = _dir.File($"check-{file}.yaml");
            File.WriteAllText(recipePath, recipe);
            Run("merge", recipePath, "-o", _dir.File("reference.safetensors"), "--threads", "1").EnsureSuccess();
            Assert.True(File.ReadAllBytes(_dir.File("reference.safetensors")).AsSpan().SequenceEqual(File.ReadAllBytes(candidate)), $"{file} differs from the merge of its own recipe");
            // The models are not beside the candidates: a replay looks for them where it is told.
            Run("merge", "--from-metadata", candidate, "--models-dir", _dir.Path, "-o", _dir.File("replay.safetensors")).EnsureSuccess();
            Assert.True(File.ReadAllBytes(_dir.File("replay.safetensors")).AsSpan().SequenceEqual(File.ReadAllBytes(candidate)), $"{file}: replay differs");
        }
    }

    [Fact]
    public void Leave_one_out_of_a_weighted_mean_gives_each_candidate_the_bits_of_its_own_merge()
    {
        var r = Run("sweep", _dir.File("mix.yaml"), "--leave-one-out", "unet", "-o", _dir.File("out"), "--threads", "2").EnsureSuccess();
        Assert.Contains("5 candidates", r.Stdout);
        AssertEachIsItsOwnMerge(_dir.File("out"), ["mix-minus-a.safetensors", "mix-minus-b.safetensors", "mix-minus-c.safetensors", "mix-minus-d.safetensors", "mix-minus-base.safetensors"]);
        using var f = SafetensorsFile.Open(_dir.File("out/mix-minus-c.safetensors"));
        string recipe = f.Header.Metadata["mergecluster.recipe"];
        Assert.Contains("models: [a, b, d, base], weights: [1, 2, 0.5, 1]", recipe);
        Assert.Contains("c: c.safetensors", recipe); // still listed, so every model keeps its reduction group
    }

    [Fact]
    public void Leave_one_out_where_a_pruned_model_is_filled_from_the_base_matches_its_merges()
    {
        Run("sweep", _dir.File("mix.yaml"), "--leave-one-out", "vae", "-o", _dir.File("out")).EnsureSuccess();
        AssertEachIsItsOwnMerge(_dir.File("out"), ["mix-minus-a.safetensors", "mix-minus-b.safetensors", "mix-minus-c.safetensors"]);
    }

    [Fact]
    public void Leave_one_out_of_a_non_linear_method_matches_its_merges()
    {
        Run("sweep", _dir.File("mix.yaml"), "--leave-one-out", "te1", "-o", _dir.File("out")).EnsureSuccess();
        AssertEachIsItsOwnMerge(_dir.File("out"), ["mix-minus-a.safetensors", "mix-minus-c.safetensors", "mix-minus-d.safetensors"]);
    }

    [Fact]
    public void Swap_takes_the_component_from_each_model_and_matches_its_merges()
    {
        Run("sweep", _dir.File("mix.yaml"), "--swap", "te0", "-o", _dir.File("out")).EnsureSuccess();
        AssertEachIsItsOwnMerge(_dir.File("out"), ["mix-te0-a.safetensors", "mix-te0-b.safetensors", "mix-te0-c.safetensors", "mix-te0-d.safetensors", "mix-te0-base.safetensors"]);
        // The candidate's te0 is d's own, rounded once to the output dtype.
        const string key = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight";
        var expected = new byte[Checkpoints.Values(_dir.File("d.safetensors"), key).Length * 2];
        DTypeConvert.FromFloat64(Checkpoints.Values(_dir.File("d.safetensors"), key), DType.BF16, expected);
        Assert.Equal(expected, Checkpoints.RawBytes(_dir.File("out/mix-te0-d.safetensors"), key));
    }

    [SkippableFact]
    public void Not_enough_room_is_one_line_with_the_bytes_needed_before_any_work()
    {
        string mount = _dir.File("small");
        Directory.CreateDirectory(mount);
        // A 1 MiB file system of its own (the tests run as root); without one the check cannot be exercised here.
        var p = Process.Start(new ProcessStartInfo("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mount]) { RedirectStandardError = true })!;
        p.WaitForExit();
        Skip.If(p.ExitCode != 0, $"mount -t tmpfs is not permitted here: {p.StandardError.ReadToEnd().Trim()}");
        try
        {
            var r = Run("sweep", _dir.File("mix.yaml"), "--leave-one-out", "unet", "-o", mount);
            r.AssertOneLineError("small: not enough disk space for 5 candidates");
            Assert.Matches(@"\d+ bytes needed, \d+ available$", r.StderrLines[^1]);
            Assert.Empty(Directory.GetFileSystemEntries(mount));
        }
        finally
        {
            Process.Start("umount", [mount]).WaitForExit();
        }
    }

    [Fact]
    public async Task A_sweep_that_fails_leaves_no_partial_candidate()
    {
        var recipe = Recipe.Load(_dir.File("mix.yaml"));
        string dir = _dir.File("out");
        var job = SweepJob.Create(recipe, SweepMode.LeaveOneOut, Component.Unet, dir, hashInputs: false, threads: 2);
        // An input that shrinks after planning fails the run partway.
        using (var s = new FileStream(_dir.File("c.safetensors"), FileMode.Open)) s.SetLength(s.Length / 2);
        await Assert.ThrowsAsync<SafetensorsException>(() => job.RunAsync(2, null, CancellationToken.None));
        Assert.Empty(Directory.GetFileSystemEntries(dir));
    }

    [Fact]
    public void Recipes_a_sweep_cannot_vary_are_one_line_errors()
    {
        File.WriteAllText(_dir.File("ws.yaml"), "models:\n  a: a.safetensors\n  d: d.safetensors\ncomponents:\n  all: { method: weighted_sum, models: [a, d], alpha: 0.5 }\noutput: { path: ws.safetensors }\n");
        foreach (var (args, mention) in new[]
        {
            (new[] { "sweep", _dir.File("ws.yaml"), "--leave-one-out", "unet" }, "weighted_sum"),
            (["sweep", _dir.File("mix.yaml"), "--leave-one-out", "clip"], "clip"),
            (["sweep", _dir.File("mix.yaml")], "--leave-one-out"),
        })
        {
            Run(args).AssertOneLineError(mention);
        }
    }

    /// <summary>Candidates are written as `merge` writes: exclusive random temporary files, never through a planted link.</summary>
    [Fact]
    public void A_symlink_planted_at_a_candidate_or_a_temporary_name_is_never_written_through()
    {
        string dir = _dir.File("out");
        Directory.CreateDirectory(dir);
        File.WriteAllText(_dir.File("victim.txt"), "the victim's file");
        File.CreateSymbolicLink(Path.Combine(dir, "mix-minus-a.safetensors"), _dir.File("victim.txt"));
        File.CreateSymbolicLink(Path.Combine(dir, ".mix-minus-b.safetensors.tmp"), _dir.File("victim.txt"));
        Run("sweep", _dir.File("mix.yaml"), "--leave-one-out", "vae", "-o", dir, "--no-hash").EnsureSuccess();
        Assert.Equal("the victim's file", File.ReadAllText(_dir.File("victim.txt")));
        Assert.Null(new FileInfo(Path.Combine(dir, "mix-minus-a.safetensors")).LinkTarget);
        using (var f = SafetensorsFile.Open(Path.Combine(dir, "mix-minus-a.safetensors"))) Assert.NotEmpty(f.Tensors);
        Assert.Empty(Directory.GetFiles(dir, ".*.mc-*"));
    }

    /// <summary>
    /// A candidate's file that is one of the recipe's models, reached through a linked directory (so the paths differ
    /// as strings), is refused by file identity before anything is written.
    /// </summary>
    [Fact]
    public void A_candidate_that_is_an_input_under_another_path_is_refused()
    {
        File.Copy(_dir.File("a.safetensors"), _dir.File("pair-minus-d.safetensors"));
        var original = File.ReadAllBytes(_dir.File("pair-minus-d.safetensors"));
        File.WriteAllText(_dir.File("pair.yaml"), "models:\n  a: pair-minus-d.safetensors\n  d: d.safetensors\ncomponents:\n  all: { method: mean, models: [a, d] }\noutput: pair.safetensors\n"); // the short form of output, as merge takes it
        Directory.CreateSymbolicLink(_dir.File("linked"), _dir.Path);

        var r = Run("sweep", _dir.File("pair.yaml"), "--leave-one-out", "unet", "-o", _dir.File("linked"), "--no-hash");
        r.AssertOneLineError("pair-minus-d.safetensors", "model 'a'");
        Assert.Equal(original, File.ReadAllBytes(_dir.File("pair-minus-d.safetensors")));
        Assert.False(File.Exists(_dir.File("pair-minus-a.safetensors")));
        Assert.Empty(Directory.GetFiles(_dir.Path, ".*.mc-*"));
    }

    [Theory]
    [InlineData(2, 130, "SIGINT")]
    [InlineData(15, 143, "SIGTERM")]
    public async Task A_signal_while_inputs_are_hashed_stops_the_sweep_at_once_and_leaves_nothing(int signal, int exit, string name)
    {
        // 2 x 8 GB of holes, hashed one after the other: that takes many seconds, so the signal lands while the hash
        // runs (and the candidates' 16 GB pass the room check).
        Posix.SparseCheckpoint(_dir.File("big1.safetensors"), 8L << 30);
        Posix.SparseCheckpoint(_dir.File("big2.safetensors"), 8L << 30);
        File.WriteAllText(_dir.File("big.yaml"), "models:\n  big1: big1.safetensors\n  big2: big2.safetensors\ncomponents:\n  all: { method: mean, models: [big1, big2] }\noutput: { path: big.safetensors }\n");
        string dir = _dir.File("out");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "big-minus-big1.safetensors"), "the previous candidate");
        Posix.UnignoreForChildren(signal);
        using var sweep = Support.Cli.Start(["sweep", _dir.File("big.yaml"), "--leave-one-out", "unet", "-o", dir, "--threads", "1"], _dir.Path, _env);
        await sweep.WaitForStderrAsync("sweep: hashing", TimeSpan.FromMinutes(5));
        sweep.Signal(signal);
        var r = await sweep.WaitForExitAsync(TimeSpan.FromMinutes(2));

        Assert.Equal(exit, r.ExitCode);
        Assert.Equal($"error: interrupted ({name}); existing output files were left untouched and temporary files removed", r.StderrLines[^1]);
        Assert.Equal(["big-minus-big1.safetensors"], Directory.GetFileSystemEntries(dir).Select(Path.GetFileName));
        Assert.Equal("the previous candidate", File.ReadAllText(Path.Combine(dir, "big-minus-big1.safetensors")));
        Assert.False(File.Exists(_dir.File("cache/hashes.tsv")) && File.ReadAllText(_dir.File("cache/hashes.tsv")).Contains("big"));
    }
}
