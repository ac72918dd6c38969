using MergeCluster.Cluster;
using System.CommandLine;
using MergeCluster.Merge;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Synthesis;
using MergeCluster.Safetensors;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster synth`: writes a synthetic checkpoint with a real architecture's keys, for tests and demos.</summary>
public static class SynthCommand
{
    public static Command Create()
    {
        var arch = new Option<string>("--arch") { Description = "Architecture whose keys to write: sdxl or sd15", Required = true };
        arch.AcceptOnlyFromAmong("sdxl", "sd15");
        var seed = new Option<ulong>("--seed") { Description = "Seed of this 'fine-tune': files share a base and differ by a small per-seed deviation", Required = true };
        var scale = new Option<double>("--scale") { Description = "Shrink every dimension d to max(1, ceil(d*S)); 1 writes the full size (SDXL: 6.9 GB in f16)", DefaultValueFactory = _ => 1.0 };
        var dtype = new Option<string>("--dtype") { Description = "dtype of the floating-point tensors: f16, bf16 or f32", DefaultValueFactory = _ => "f16" };
        dtype.AcceptOnlyFromAmong("f16", "bf16", "f32");
        var drop = new Option<string[]>("--drop-prefix") { Description = "Leave out keys with this prefix, to make a pruned file (repeatable), e.g. first_stage_model." };
        var meta = new Option<string[]>("--meta") { Description = "Add KEY=VALUE to the header's __metadata__ (repeatable)" };
        var output = new Option<string>("--output", "-o") { Description = "File to write (.safetensors); written to a temporary file and renamed", Required = true };

        var command = new Command("synth", "Write a synthetic checkpoint with the real key structure of SDXL or SD1.5");
        foreach (var o in new Option[] { arch, seed, scale, dtype, drop, meta, output }) command.Options.Add(o);
        command.SetAction((parse, cancellation) =>
        {
            string path = parse.GetValue(output)!;
            if (!path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
                throw new MergeException($"{path}: synth writes .safetensors files; give the output that extension");
            DTypes.TryParseUser(parse.GetValue(dtype)!, out var floatType);
            var options = new SynthesisOptions
            {
                Architecture = ModelArchitecture.Parse(parse.GetValue(arch)!),
                Seed = parse.GetValue(seed),
                Scale = parse.GetValue(scale),
                FloatType = floatType,
                DropPrefixes = parse.GetValue(drop) ?? [],
                Metadata = ParseMetadata(parse.GetValue(meta) ?? []),
            };
            SynthesisResult result;
            using (var progress = HumanConsole.ByteProgress($"writing {path}"))
                result = SyntheticCheckpoint.Write(path, options, cancellation, progress);
            double seconds = Math.Max(result.Elapsed.TotalSeconds, 1e-3);
            Console.WriteLine($"wrote {Terminal.Escape(path)}: {options.Architecture.Name}, {result.Tensors} tensors, {result.Parameters:N0} parameters, " +
                $"{Units.Bytes(result.Bytes)} in {seconds:F1} s ({Units.Bytes((long)(result.Bytes / seconds))}/s)");
            return Task.FromResult(0);
        });
        return command;
    }

    private static Dictionary<string, string>? ParseMetadata(string[] pairs)
    {
        if (pairs.Length == 0) return null;
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string pair in pairs)
        {
            int eq = pair.IndexOf('=');
            if (eq <= 0) throw new MergeException($"--meta '{pair}' is not KEY=VALUE");
            metadata[pair[..eq]] = pair[(eq + 1)..];
        }
        return metadata;
    }
}
