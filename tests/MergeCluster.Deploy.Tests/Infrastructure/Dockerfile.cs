using System.Text.RegularExpressions;

namespace MergeCluster.Deploy.Tests.Infrastructure;

/// <summary>The instructions of deploy/Dockerfile's stages, continuation lines joined and comments dropped.</summary>
internal sealed partial class Dockerfile
{
    /// <summary>Each stage's instructions as (INSTRUCTION, arguments), in order; the last stage is the image.</summary>
    public IReadOnlyList<IReadOnlyList<(string Instruction, string Arguments)>> Stages { get; }

    public IReadOnlyList<(string Instruction, string Arguments)> Image => Stages[^1];

    private Dockerfile(IReadOnlyList<IReadOnlyList<(string, string)>> stages) => Stages = stages;

    public static Dockerfile Load(string path)
    {
        var stages = new List<List<(string, string)>>();
        string pending = "";
        foreach (string raw in File.ReadLines(path))
        {
            string line = raw.TrimEnd();
            if (pending.Length == 0 && line.TrimStart().StartsWith('#')) continue;
            if (pending.Length > 0 && line.TrimStart().StartsWith('#')) continue; // comments inside a continued instruction
            if (line.EndsWith('\\')) { pending += line[..^1] + " "; continue; }
            string whole = (pending + line).Trim();
            pending = "";
            if (whole.Length == 0) continue;
            var match = Instruction().Match(whole);
            if (!match.Success) throw new FormatException($"{path}: cannot read `{whole}`");
            string instruction = match.Groups[1].Value.ToUpperInvariant();
            if (instruction == "FROM") stages.Add([]);
            else if (stages.Count == 0) continue; // ARGs before the first FROM
            stages[^1].Add((instruction, match.Groups[2].Value.Trim()));
        }
        return new Dockerfile(stages);
    }

    /// <summary>The image's environment: ENV KEY=VALUE pairs of the last stage (values without spaces or quotes).</summary>
    public IReadOnlyDictionary<string, string> Environment()
    {
        var env = new Dictionary<string, string>();
        foreach (var (_, args) in Image.Where(i => i.Instruction == "ENV"))
            foreach (string pair in args.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                int eq = pair.IndexOf('=');
                if (eq <= 0) throw new FormatException($"ENV {args}: use KEY=VALUE");
                env[pair[..eq]] = pair[(eq + 1)..];
            }
        return env;
    }

    public string Single(string instruction) => Image.Single(i => i.Instruction == instruction).Arguments;

    [GeneratedRegex(@"^([A-Za-z]+)\s+(.*)$")]
    private static partial Regex Instruction();
}
