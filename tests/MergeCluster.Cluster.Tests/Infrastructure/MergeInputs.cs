namespace MergeCluster.Cluster.Tests.Infrastructure;

/// <summary>Small SDXL-structured models and a component recipe whose tree has three leaves per shard.</summary>
public static class MergeInputs
{
    /// <summary>The recipe's `models:` and `base:` lines for the five models <see cref="WriteAsync"/> writes.</summary>
    public const string Models = """
        models:
          base: models/m0.safetensors
          m1: models/m1.safetensors
          m2: models/m2.safetensors
          m3: models/m3.safetensors
          m4: models/m4.safetensors
        base: base

        """;

    /// <summary>Five models under ROOT/models (one bf16, one without VAE), and ROOT/recipe.yaml writing ROOT/out/OUTPUT.</summary>
    public static async Task<string> WriteAsync(TempDirectory root, string outputName = "cluster.safetensors", double scale = 0.04)
    {
        Directory.CreateDirectory(root.File("models"));
        Directory.CreateDirectory(root.File("out"));
        var synth = new List<Task<ProcessRunner.Result>>();
        for (int i = 0; i < 5; i++)
        {
            var extra = i switch
            {
                2 => new[] { "--dtype", "bf16" },
                3 => new[] { "--drop-prefix", "first_stage_model." },
                _ => Array.Empty<string>(),
            };
            var scaleText = scale.ToString(System.Globalization.CultureInfo.InvariantCulture);
            synth.Add(MergeClusterCli.RunAsync(null, ["synth", "--arch", "sdxl", "--seed", i.ToString(), "--scale", scaleText, .. extra, "-o", root.File($"models/m{i}.safetensors")]));
        }
        foreach (var r in await Task.WhenAll(synth)) Assert.True(r.ExitCode == 0, r.Output);
        var recipe = root.File("recipe.yaml");
        await File.WriteAllTextAsync(recipe, Models + $$"""
            components:
              unet: { method: mean, models: [m1, m2, m3, m4, base], weights: [1, 1, 2, 1, 0.5] }
              te0: { method: mean, models: [m2, m3, m4] }
              te1: { method: weighted_sum, models: [m1, m2], alpha: 0.3 }
            output: { path: out/{{outputName}}, dtype: f16 }
            reduce: { group: 2 }

            """);
        return recipe;
    }

    /// <summary>The embedded <c>merge</c> of the same recipe, as a process: the bytes the cluster must reproduce.</summary>
    public static async Task<byte[]> LocalMergeAsync(TempDirectory root, string recipe)
    {
        var output = root.File("out/local.safetensors");
        var local = await MergeClusterCli.RunAsync(null, "merge", recipe, "-o", output, "--threads", "2");
        Assert.True(local.ExitCode == 0, local.Output);
        return await File.ReadAllBytesAsync(output);
    }
}
