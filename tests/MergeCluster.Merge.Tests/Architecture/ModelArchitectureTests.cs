using MergeCluster.Merge.Architecture;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Architecture;

public class ModelArchitectureTests
{
    public static TheoryData<string> Known => new() { "sdxl", "sd15" };

    [Fact]
    public void Tables_hold_every_row_of_the_shared_fact_tables()
    {
        Assert.Equal(2531, ModelArchitecture.Sdxl.Keys.Count);
        Assert.Equal(1831, ModelArchitecture.Sd15.Keys.Count);
        Assert.Equal(1680 + 178 + 374 + 248, ModelArchitecture.Sdxl.Required.Count);
        Assert.Equal(686 + 196 + 248, ModelArchitecture.Sd15.Required.Count);
        Assert.Empty(ModelArchitecture.Unknown.Keys);
    }

    [Fact]
    public void Table_rows_keep_their_shape_and_dtype()
    {
        Assert.True(ModelArchitecture.Sdxl.TryGetKey("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", out var token));
        Assert.Equal([49408L, 768L], token.Shape.ToArray());
        Assert.Equal(DType.F16, token.DType);
        Assert.Equal(Component.Te0, token.Component);
        Assert.True(token.Required);

        Assert.True(ModelArchitecture.Sdxl.TryGetKey("conditioner.embedders.1.model.logit_scale", out var logit));
        Assert.Empty(logit.Shape);
        Assert.Equal(1, logit.ElementCount);
        Assert.False(logit.Required);

        Assert.True(ModelArchitecture.Sdxl.TryGetKey("v_pred", out var marker));
        Assert.Equal([0L], marker.Shape.ToArray());
        Assert.Equal(0, marker.ElementCount);

        Assert.True(ModelArchitecture.Sd15.TryGetKey("cond_stage_model.transformer.text_model.embeddings.position_ids", out var ids));
        Assert.Equal(DType.I64, ids.DType);
        Assert.Equal([1L, 77L], ids.Shape.ToArray());
    }

    /// <summary>The meta table's group column (from sd-mecha) and the prefix rule must agree on every key.</summary>
    [Theory]
    [MemberData(nameof(Known))]
    public void Every_key_maps_to_the_component_of_its_group(string name)
    {
        var arch = ModelArchitecture.Parse(name);
        foreach (var spec in arch.Keys)
        {
            var expected = spec.Group switch
            {
                "clip_l" => Component.Te0,
                "clip_g" => Component.Te1,
                "vae" => Component.Vae,
                "diffuser" when spec.Key.StartsWith("model.diffusion_model.", StringComparison.Ordinal) => Component.Unet,
                "diffuser" or "ema" or "scheduler" => Component.Other,
                _ => throw new InvalidOperationException($"unexpected group {spec.Group} of {spec.Key}"),
            };
            Assert.True(expected == arch.ComponentOf(spec.Key), $"{name} {spec.Key}: {arch.ComponentOf(spec.Key)} != {expected}");
            Assert.Equal(expected, spec.Component);
            foreach (string alias in spec.Aliases)
                Assert.Equal(expected, arch.ComponentOf(alias));
        }
    }

    [Fact]
    public void Components_follow_the_layout_prefixes()
    {
        Assert.Equal(Component.Te0, ModelArchitecture.Sd15.ComponentOf("cond_stage_model.transformer.anything"));
        Assert.Equal(Component.Other, ModelArchitecture.Sdxl.ComponentOf("cond_stage_model.transformer.anything"));
        Assert.Equal(Component.Other, ModelArchitecture.Sd15.ComponentOf("conditioner.embedders.1.model.ln_final.weight"));
        Assert.Equal(Component.Te1, ModelArchitecture.Unknown.ComponentOf("conditioner.embedders.1.model.ln_final.weight"));
        Assert.Equal(Component.Te0, ModelArchitecture.Unknown.ComponentOf("cond_stage_model.x"));
        Assert.Equal(Component.Other, ModelArchitecture.Sdxl.ComponentOf("model.diffusion_modelx"));
        Assert.Equal(Component.Other, ModelArchitecture.Sdxl.ComponentOf("lora_unet_down_blocks_0.alpha"));
        Assert.Equal([Component.Unet, Component.Te0, Component.Te1, Component.Vae, Component.Other], ModelArchitecture.Sdxl.Components);
        Assert.Equal([Component.Unet, Component.Te0, Component.Vae, Component.Other], ModelArchitecture.Sd15.Components);
        Assert.Equal("cond_stage_model.", ModelArchitecture.Sd15.PrefixOf(Component.Te0));
        Assert.Null(ModelArchitecture.Sd15.PrefixOf(Component.Te1));
    }

    [Fact]
    public void Component_names_parse_both_ways()
    {
        foreach (var c in Components.All)
            Assert.Equal(c, Components.Parse(c.Name()));
        Assert.Equal(Component.Te1, Components.Parse(" TE1 "));
        var e = Assert.Throws<MergeException>(() => Components.Parse("clip"));
        Assert.Contains("unet, te0, te1, vae, other", e.Message);
    }

    [Fact]
    public void Architecture_names_parse()
    {
        Assert.Same(ModelArchitecture.Sdxl, ModelArchitecture.Parse("SDXL"));
        Assert.Same(ModelArchitecture.Sd15, ModelArchitecture.Parse("sd15"));
        Assert.Throws<MergeException>(() => ModelArchitecture.Parse("sd3"));
    }

    [Fact]
    public void Aliases_resolve_to_their_canonical_key()
    {
        const string canonical = "cond_stage_model.transformer.text_model.encoder.layers.4.layer_norm1.bias";
        const string alias = "cond_stage_model.transformer.encoder.layers.4.layer_norm1.bias";
        Assert.Equal(canonical, ModelArchitecture.Sd15.Canonical(alias));
        Assert.Equal(canonical, ModelArchitecture.Sd15.Canonical(canonical));
        Assert.Null(ModelArchitecture.Sdxl.Canonical(alias));
        Assert.True(ModelArchitecture.Sd15.TryGetKey(alias, out var spec));
        Assert.Equal(canonical, spec.Key);
    }
}
