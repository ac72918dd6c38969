using MergeCluster.Merge.Tests.Merging;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Cli;

/// <summary>
/// `merge --from-metadata`: a merged file carries its recipe and its inputs' hashes, bound together, and relative
/// paths only; a downloaded file's metadata is untrusted input.
/// </summary>
public class ReplayTests : IDisposable
{
    private readonly TempDirectory _dir = new();
    private readonly Dictionary<string, string?> _env;
    private const string RecipeText = "models:\n  a: a.safetensors\n  b: b.safetensors\n  c: c.safetensors\ncomponents:\n  all: { method: mean, models: [a, b] }\noutput: out.safetensors\n";

    public ReplayTests()
    {
        _env = new() { ["MERGECLUSTER_CACHE"] = _dir.File("cache") };
        foreach (var (name, seed) in new[] { ("a", 1), ("b", 2), ("c", 3) }) Checkpoints.Write(_dir.File($"{name}.safetensors"), seed, DType.F16);
        File.WriteAllText(_dir.File("recipe.yaml"), RecipeText);
    }

    public void Dispose() => _dir.Dispose();

    private CliResult Run(params string[] args) => Support.Cli.Run(args, _dir.Path, _env);

    private string Merged(params string[] extra)
    {
        Run(["merge", _dir.File("recipe.yaml"), .. extra]).EnsureSuccess();
        return _dir.File("out.safetensors");
    }

    private string Edited(Action<Dictionary<string, string>> edit)
    {
        CheckpointEdits.CopyWithMetadata(Merged(), _dir.File("edited.safetensors"), edit);
        return _dir.File("edited.safetensors");
    }

    private CliResult Replay(string file, params string[] extra) =>
        Run(["merge", "--from-metadata", file, "-o", _dir.File("again.safetensors"), .. extra]);

    [Fact]
    public void A_model_added_to_the_embedded_recipe_stops_the_replay_and_is_named()
    {
        string file = Edited(m => m["mergecluster.recipe"] = RecipeText.Replace("models: [a, b]", "models: [a, b, c]"));
        Replay(file).AssertOneLineError("model 'c'", "no hash is recorded");
        Assert.False(File.Exists(_dir.File("again.safetensors")));
    }

    [Fact]
    public void A_recorded_model_the_embedded_recipe_no_longer_reads_stops_the_replay()
    {
        string file = Edited(m => m["mergecluster.recipe"] = RecipeText.Replace("models: [a, b]", "models: [a]"));
        Replay(file).AssertOneLineError("model 'b'", "does not read");
        Assert.False(File.Exists(_dir.File("again.safetensors")));
    }

    [Fact]
    public void A_file_without_recorded_inputs_replays_only_when_asked_to_and_says_it_is_unverified()
    {
        Merged("--no-hash");
        Replay(_dir.File("out.safetensors")).AssertOneLineError("records no input hashes", "--unverified");
        Assert.False(File.Exists(_dir.File("again.safetensors")));
        var r = Replay(_dir.File("out.safetensors"), "--unverified").EnsureSuccess();
        Assert.Contains("warning:", r.Stderr);
        Assert.Contains("without verification", r.Stderr);
    }

    [Theory]
    [InlineData("not json")]
    [InlineData("{\"a\": 12}")]
    [InlineData("[]")]
    public void Malformed_recorded_inputs_are_one_line(string inputs)
    {
        Assert.Equal(1, Replay(Edited(m => m["mergecluster.inputs"] = inputs)).AssertOneLineError("edited.safetensors", "mergecluster.inputs").ExitCode);
    }

    [Fact]
    public void The_merged_file_records_no_directory_and_a_replay_finds_the_models_beside_it_or_under_models_dir()
    {
        string merged = Merged();
        var header = File.ReadAllText(merged)[..4096];
        Assert.DoesNotContain(_dir.Path, header);
        using (var file = SafetensorsFile.Open(merged)) Assert.DoesNotContain("mergecluster.recipe_dir", file.Header.Metadata.Keys);

        // Published: the mix alone in another user's download directory, the models somewhere else.
        using var elsewhere = new TempDirectory();
        File.Copy(merged, elsewhere.File("mix.safetensors"));
        var missing = Run("merge", "--from-metadata", elsewhere.File("mix.safetensors"), "-o", elsewhere.File("again.safetensors"));
        missing.AssertOneLineError(elsewhere.File("a.safetensors"), "not found");
        Run("merge", "--from-metadata", elsewhere.File("mix.safetensors"), "-o", elsewhere.File("again.safetensors"), "--models-dir", _dir.Path).EnsureSuccess();
        Assert.Equal(File.ReadAllBytes(merged), File.ReadAllBytes(elsewhere.File("again.safetensors")));

        // By default the models resolve beside the replayed file.
        foreach (string m in new[] { "a", "b", "c" }) File.Copy(_dir.File($"{m}.safetensors"), elsewhere.File($"{m}.safetensors"));
        Run("merge", "--from-metadata", elsewhere.File("mix.safetensors"), "-o", elsewhere.File("default.safetensors")).EnsureSuccess();
        Assert.Equal(File.ReadAllBytes(merged), File.ReadAllBytes(elsewhere.File("default.safetensors")));
    }

    [Fact]
    public void A_recipe_nested_60000_deep_in_a_downloaded_file_is_one_line()
    {
        string file = Edited(m => m["mergecluster.recipe"] = new string('[', 60_000));
        var r = Replay(file).AssertOneLineError("nests deeper than 32 levels");
        Assert.Equal(1, r.ExitCode);
    }

    [Fact]
    public void An_output_that_names_only_a_dtype_takes_its_path_from_o()
    {
        File.WriteAllText(_dir.File("recipe.yaml"), RecipeText.Replace("output: out.safetensors", "output: { dtype: bf16 }"));
        Run("merge", _dir.File("recipe.yaml"), "-o", _dir.File("given.safetensors")).EnsureSuccess();
        using (var file = SafetensorsFile.Open(_dir.File("given.safetensors"))) Assert.All(file.Tensors.Where(t => t.DType.IsFloat()), t => Assert.Equal(DType.BF16, t.DType));
        Run("merge", _dir.File("recipe.yaml")).AssertOneLineError("recipe.yaml:7:", "output has no path", "-o");
        Run("merge", _dir.File("recipe.yaml"), "--dry-run").AssertOneLineError("recipe.yaml:7:", "output has no path");
    }
}
