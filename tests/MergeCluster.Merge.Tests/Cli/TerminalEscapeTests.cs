using MergeCluster.Merge.Tests.Merging;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Cli;

/// <summary>
/// Key names, metadata and recipes from a downloaded file reach the terminal as text, never as control sequences
/// (OSC 52 would write the user's clipboard); `--json` keeps them exact.
/// </summary>
public class TerminalEscapeTests : IDisposable
{
    private const string Osc52 = "\u001b]52;c;cm0gLXJmIH4=\u0007";
    private const string Red = "\u001b[31m";
    private const string Csi = "\u009b2J";
    private static readonly string HostileKey = $"model.diffusion_model.{Red}x{Csi}";
    private static readonly string HostileValue = $"title{Osc52}\u007f\u202eend\r\nforged: line";

    private readonly TempDirectory _dir = new();
    public void Dispose() => _dir.Dispose();

    private string Hostile()
    {
        string path = _dir.File("hostile.safetensors");
        var tensors = Checkpoints.SdxlLike(DType.F16).Append(new Checkpoints.Tensor(HostileKey, DType.F16, [4])).ToList();
        Checkpoints.Write(path, 1, DType.F16, tensors: tensors, metadata: new Dictionary<string, string> { [$"modelspec.{Red}title"] = HostileValue });
        return path;
    }

    /// <summary>No C0 but newline, no DEL, no C1; <paramref name="bidi"/>: no right-to-left override either (human output).</summary>
    private static void AssertNoControls(string text, bool bidi = true)
    {
        foreach (char c in text)
            Assert.False(c < 0x20 && c is not '\n' || c is >= '\u007f' and <= '\u009f' || bidi && c == '\u202e', $"control character U+{(int)c:X4} in:\n{text}");
    }

    [Fact]
    public void Inspect_tables_show_control_characters_as_escapes_and_json_keeps_them_exact()
    {
        string file = Hostile();
        var table = Support.Cli.Run("inspect", file).EnsureSuccess();
        AssertNoControls(table.Stdout);
        Assert.Contains(@"\x1b]52;c;cm0gLXJmIH4=\x07", table.Stdout);
        Assert.Contains(@"model.diffusion_model.\x1b[31mx\x9b2J", table.Stdout);
        Assert.DoesNotContain("\nforged: line", table.Stdout);

        var json = Support.Cli.Run("inspect", file, "--json").Json();
        Assert.Equal(HostileValue, json.GetProperty("metadata").GetProperty($"modelspec.{Red}title").GetString());
        Assert.Contains(HostileKey, json.GetProperty("unknown_keys").EnumerateArray().Select(k => k.GetString()));
        // JSON escapes every control character itself (\u001b): exact, and inert on a terminal.
        AssertNoControls(Support.Cli.Run("inspect", file, "--json").Stdout, bidi: false);
    }

    [Fact]
    public void Errors_and_dry_runs_show_names_from_files_escaped()
    {
        string file = Hostile();
        Checkpoints.Write(_dir.File("b.safetensors"), 2, DType.F16, tensors: Checkpoints.SdxlLike(DType.F16).Append(new Checkpoints.Tensor(HostileKey, DType.F16, [5])).ToList());
        File.WriteAllText(_dir.File("recipe.yaml"), "models:\n  \"\\e[31ma\": hostile.safetensors\n  b: b.safetensors\ncomponents:\n  all: { method: mean, models: [\"\\e[31ma\", b] }\noutput: out.safetensors\n");
        var error = Support.Cli.Run(["merge", _dir.File("recipe.yaml")], _dir.Path).AssertOneLineError(@"\x1b[31mx\x9b2J", "shape");
        AssertNoControls(error.Stderr);

        Checkpoints.Write(_dir.File("b.safetensors"), 2, DType.F16, tensors: Checkpoints.SdxlLike(DType.F16).Append(new Checkpoints.Tensor(HostileKey, DType.F16, [4])).ToList());
        var plan = Support.Cli.Run(["merge", _dir.File("recipe.yaml"), "--dry-run"], _dir.Path).EnsureSuccess();
        AssertNoControls(plan.Stdout);
        Assert.Contains(@"\x1b[31ma", plan.Stdout);
    }

    [Fact]
    public void Sweep_and_distance_show_model_names_escaped()
    {
        string hostile = _dir.File("\u001b[31mred.safetensors");
        Checkpoints.Write(hostile, 1, DType.F16);
        Checkpoints.Write(_dir.File("b.safetensors"), 2, DType.F16);
        var distance = Support.Cli.Run(["distance", hostile, _dir.File("b.safetensors"), "--component", "te0", "--threads", "1"], _dir.Path).EnsureSuccess();
        AssertNoControls(distance.Stdout);
        Assert.Contains(@"\x1b[31mred", distance.Stdout);

        File.WriteAllText(_dir.File("recipe.yaml"), "models:\n  \"\\e[31ma\": \"\\e[31mred.safetensors\"\n  b: b.safetensors\ncomponents:\n  all: { method: mean, models: [\"\\e[31ma\", b] }\noutput: { path: out.safetensors }\n");
        var sweep = Support.Cli.Run(["sweep", _dir.File("recipe.yaml"), "--leave-one-out", "te0", "--no-hash", "--threads", "1"], _dir.Path).EnsureSuccess();
        AssertNoControls(sweep.Stdout);
        Assert.Contains(@"without \x1b[31ma", sweep.Stdout);
    }
}
