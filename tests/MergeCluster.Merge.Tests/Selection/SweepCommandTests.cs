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
            // The candidates lie in a directory of their own: their recipe's model paths resolve against the models' one.
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

    [Fact]
    public void Not_enough_room_is_one_line_with_the_bytes_needed_before_any_work()
    {
        string mount = _dir.File("small");
        Directory.CreateDirectory(mount);
        // A 1 MiB file system of its own (the tests run as root); without one the check cannot be exercised here.
        var p = Process.Start(new ProcessStartInfo("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mount]) { RedirectStandardError = true })!;
        p.WaitForExit();
        if (p.ExitCode != 0) return;
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
}
