using System.CommandLine;
using System.Globalization;

namespace MergeCluster.Cli.Commands;

/// <summary>
/// `mergecluster demo`: the main job end to end on the embedded default. It runs the very commands a user would type
/// (synth, merge --dry-run, merge, inspect, a replay) on small SDXL-structured models, printing each one first.
/// </summary>
public static class DemoCommand
{
    public static Command Create(RootCommand root)
    {
        var dir = new Option<DirectoryInfo>("--dir") { Description = "Where to put the demo's models, recipe and output", DefaultValueFactory = _ => new DirectoryInfo("mergecluster-demo") };
        var scale = new Option<double>("--scale") { Description = "Size of the synthetic models relative to real SDXL (1 = 6.9 GB each)", DefaultValueFactory = _ => 0.05 };
        var command = new Command("demo", "Synthesise a few small SDXL-structured checkpoints (one pruned, one bf16), merge them with a component recipe, inspect and replay the result") { dir, scale };
        command.SetAction(async (parse, ct) =>
        {
            var where = parse.GetValue(dir)!;
            Directory.CreateDirectory(where.FullName);
            string s = parse.GetValue(scale).ToString(CultureInfo.InvariantCulture);
            string F(string name) => Path.Combine(where.FullName, name);

            var steps = new List<string[]>
            {
                new[] { "synth", "--arch", "sdxl", "--seed", "0", "--scale", s, "-o", F("base.safetensors") },
                new[] { "synth", "--arch", "sdxl", "--seed", "1", "--scale", s, "-o", F("x01.safetensors") },
                new[] { "synth", "--arch", "sdxl", "--seed", "2", "--scale", s, "--dtype", "bf16", "-o", F("x02.safetensors") },
                new[] { "synth", "--arch", "sdxl", "--seed", "3", "--scale", s, "--drop-prefix", "first_stage_model.", "--drop-prefix", "conditioner.embedders.1.", "-o", F("x03-pruned.safetensors") },
                new[] { "synth", "--arch", "sdxl", "--seed", "4", "--scale", s, "-o", F("x04.safetensors") },
            };
            foreach (var step in steps)
                if (await Run(root, step, ct) is var rc and not 0) return rc;

            string recipe = F("recipe.yaml");
            await File.WriteAllTextAsync(recipe, """
                # A component recipe in the style of AstolfoMix-XL: each component from its own list of models.
                models:
                  base: base.safetensors
                  x01: x01.safetensors
                  x02: x02.safetensors
                  x03: x03-pruned.safetensors   # no VAE and no CLIP-G: repaired from the base
                  x04: x04.safetensors
                base: base
                components:
                  unet: { method: mean, models: [x01, x02, x03, x04] }
                  te0:  { method: mean, models: [x02, x03] }
                  te1:  { method: weighted_sum, models: [x01, x03], alpha: 0.3 }
                  vae:  { method: copy, model: base }
                output: { path: mix.safetensors, dtype: f16 }

                """, ct);
            Console.WriteLine();
            Console.WriteLine($"$ cat {recipe}");
            Console.Write(await File.ReadAllTextAsync(recipe, ct));

            foreach (var step in new[]
            {
                new[] { "merge", recipe, "--dry-run" },
                new[] { "merge", recipe },
                new[] { "inspect", F("mix.safetensors") },
                new[] { "merge", "--from-metadata", F("mix.safetensors"), "-o", F("mix-replayed.safetensors") },
            })
            {
                if (await Run(root, step, ct) is var rc and not 0) return rc;
            }

            byte[] merged = await File.ReadAllBytesAsync(F("mix.safetensors"), ct);
            byte[] replayed = await File.ReadAllBytesAsync(F("mix-replayed.safetensors"), ct);
            bool same = merged.AsSpan().SequenceEqual(replayed);
            Console.WriteLine(same
                ? "replay: mix-replayed.safetensors is bit-identical to mix.safetensors"
                : "replay: mix-replayed.safetensors DIFFERS from mix.safetensors");
            return same ? 0 : 1;
        });
        return command;
    }

    private static async Task<int> Run(RootCommand root, string[] args, CancellationToken ct)
    {
        Console.WriteLine();
        Console.WriteLine("$ mergecluster " + string.Join(" ", args));
        Console.Out.Flush();
        return await root.Parse(args).InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false }, ct);
    }
}
