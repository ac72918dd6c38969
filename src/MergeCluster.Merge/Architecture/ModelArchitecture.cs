using System.Collections.Frozen;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Architecture;

/// <summary>
/// A checkpoint layout (SDXL, SD1.x) known from its embedded key table: every key with its shape and dtype,
/// which keys a complete file must hold, and which component each key belongs to.
/// </summary>
public sealed class ModelArchitecture
{
    /// <summary>A file is of an architecture only when at least this share of its keys are that architecture's.</summary>
    public const double DetectionThreshold = 0.9;

    private readonly FrozenDictionary<string, KeySpec> _byName;
    private readonly (string Prefix, Component Component)[] _prefixes;

    private ModelArchitecture(string name, string title, string? table, (string, Component)[] prefixes)
    {
        Name = name;
        Title = title;
        _prefixes = prefixes;
        var keys = table is null ? [] : KeyTable.Load(table, ComponentOf);
        Keys = keys;
        var byName = new Dictionary<string, KeySpec>(StringComparer.Ordinal);
        foreach (var spec in keys)
        {
            byName[spec.Key] = spec;
            foreach (string alias in spec.Aliases) byName[alias] = spec;
        }
        _byName = byName.ToFrozenDictionary(StringComparer.Ordinal);
        Required = keys.Where(k => k.Required).Select(k => k.Key).ToFrozenSet(StringComparer.Ordinal);
        Components = prefixes.Select(p => p.Item2).Append(Component.Other).Distinct().Order().ToArray();
    }

    /// <summary>SDXL 1.0 in the single-file "sgm" layout that A1111 and ComfyUI load.</summary>
    public static ModelArchitecture Sdxl { get; } = new("sdxl", "SDXL (sgm single-file)", "sdxl",
    [
        ("model.diffusion_model.", Component.Unet),
        ("conditioner.embedders.0.", Component.Te0),
        ("conditioner.embedders.1.", Component.Te1),
        ("first_stage_model.", Component.Vae),
    ]);

    /// <summary>Stable Diffusion 1.x in the "ldm" layout (v1-5-pruned and its fine-tunes).</summary>
    public static ModelArchitecture Sd15 { get; } = new("sd15", "SD 1.x (ldm)", "sd15",
    [
        ("model.diffusion_model.", Component.Unet),
        ("cond_stage_model.", Component.Te0),
        ("first_stage_model.", Component.Vae),
    ]);

    /// <summary>No known layout: no key table, components by any known prefix.</summary>
    public static ModelArchitecture Unknown { get; } = new("unknown", "unknown", null,
    [
        ("model.diffusion_model.", Component.Unet),
        ("conditioner.embedders.0.", Component.Te0),
        ("cond_stage_model.", Component.Te0),
        ("conditioner.embedders.1.", Component.Te1),
        ("first_stage_model.", Component.Vae),
    ]);

    /// <summary>The architectures detection chooses from.</summary>
    public static IReadOnlyList<ModelArchitecture> Known { get; } = [Sdxl, Sd15];

    /// <summary>Short name used on the command line and in JSON: sdxl, sd15, unknown.</summary>
    public string Name { get; }
    public string Title { get; }
    /// <summary>Every key of the table, in table order, at full size.</summary>
    public IReadOnlyList<KeySpec> Keys { get; }
    /// <summary>Keys a complete checkpoint holds; a file lacking some of them is pruned.</summary>
    public IReadOnlySet<string> Required { get; }
    /// <summary>The components this layout has, Other included.</summary>
    public IReadOnlyList<Component> Components { get; }

    public bool IsKnown => Keys.Count > 0;

    /// <summary>The key's spec, also when the file uses one of its aliases.</summary>
    public bool TryGetKey(string key, out KeySpec spec) => _byName.TryGetValue(key, out spec!);

    /// <summary>The canonical table name of a key or alias; null when this architecture does not know it.</summary>
    public string? Canonical(string key) => _byName.TryGetValue(key, out var spec) ? spec.Key : null;

    /// <summary>The component of any key, known or not, by its prefix.</summary>
    public Component ComponentOf(string key)
    {
        foreach (var (prefix, component) in _prefixes)
            if (key.StartsWith(prefix, StringComparison.Ordinal)) return component;
        return Component.Other;
    }

    /// <summary>The key prefix of a component in this layout; null for Other and for components it lacks.</summary>
    public string? PrefixOf(Component component)
    {
        foreach (var (prefix, c) in _prefixes)
            if (c == component) return prefix;
        return null;
    }

    public static bool TryParse(string name, out ModelArchitecture architecture)
    {
        string n = name.Trim().ToLowerInvariant();
        architecture = n switch
        {
            "sdxl" => Sdxl,
            "sd15" or "sd1" or "sd1.5" => Sd15,
            _ => null!,
        };
        return architecture is not null;
    }

    /// <summary>Parses sdxl or sd15; anything else is a <see cref="MergeException"/>.</summary>
    public static ModelArchitecture Parse(string name) =>
        TryParse(name, out var a) ? a : throw new MergeException($"unknown architecture '{name}'; expected sdxl or sd15");

    /// <summary>Detects the architecture of a file from its header's keys.</summary>
    public static ArchitectureDetection Detect(SafetensorsHeader header) => Detect(header.Tensors.Select(t => t.Key).ToArray());

    /// <summary>
    /// Chooses the known architecture that explains the most keys, net of those it does not know, among those that
    /// know at least <see cref="DetectionThreshold"/> of them; a tie or no candidate is Unknown. Keys alone decide,
    /// never shapes or dtypes, so scaled, fp16, bf16 and pruned files are recognised.
    /// </summary>
    public static ArchitectureDetection Detect(IReadOnlyList<string> keys)
    {
        ModelArchitecture? best = null;
        int bestScore = int.MinValue;
        bool tie = false;
        foreach (var arch in Known)
        {
            int known = 0;
            foreach (string key in keys)
                if (arch._byName.ContainsKey(key)) known++;
            if (keys.Count == 0 || known < DetectionThreshold * keys.Count) continue;
            int score = known - (keys.Count - known);
            if (score > bestScore) { best = arch; bestScore = score; tie = false; }
            else if (score == bestScore) tie = true;
        }
        return best is null || tie ? new ArchitectureDetection(Unknown, [], []) : best.Compare(keys);
    }

    /// <summary>Compares a file's keys with this architecture: the required keys it lacks and the keys it holds that this one does not know.</summary>
    public ArchitectureDetection Compare(IReadOnlyList<string> keys)
    {
        if (!IsKnown) return new ArchitectureDetection(this, [], []);
        var present = new HashSet<string>(StringComparer.Ordinal);
        var unknown = new List<string>();
        foreach (string key in keys)
        {
            if (_byName.TryGetValue(key, out var spec)) present.Add(spec.Key);
            else unknown.Add(key);
        }
        var missing = new List<string>();
        foreach (var spec in Keys)
            if (spec.Required && !present.Contains(spec.Key)) missing.Add(spec.Key);
        return new ArchitectureDetection(this, missing, unknown);
    }

    public override string ToString() => Name;
}

/// <summary>
/// What detection found: the architecture, the required keys the file lacks (canonical names, table order) and the
/// file's keys the architecture does not know (file order). Both are empty for Unknown, which has nothing to compare with.
/// </summary>
public sealed record ArchitectureDetection(ModelArchitecture Architecture, IReadOnlyList<string> MissingKeys, IReadOnlyList<string> UnknownKeys)
{
    public bool IsPruned => MissingKeys.Count > 0;
}
