using MergeCluster.Fuzz;

namespace MergeCluster.Merge.Tests.Fuzzing;

/// <summary>
/// Every seed and every input the fuzzer (fuzz/run.sh) ever found a crash, hang or stack trace with, run through
/// the same targets: each must end in the parser's own error or succeed. A new finding goes in fuzz/regressions/TARGET.
/// </summary>
public class FuzzRegressionTests
{
    public static TheoryData<string, string> Inputs()
    {
        var data = new TheoryData<string, string>();
        string root = Path.Combine(Support.Cli.RepoRoot, "fuzz");
        foreach (string target in FuzzTargets.All.Keys)
            foreach (string kind in new[] { "corpus", "regressions" })
            {
                string dir = Path.Combine(root, kind, target);
                if (!Directory.Exists(dir)) continue;
                foreach (string file in Directory.EnumerateFiles(dir).Order(StringComparer.Ordinal))
                    data.Add(target, Path.GetRelativePath(root, file));
            }
        return data;
    }

    [Theory]
    [MemberData(nameof(Inputs))]
    public void An_input_ends_in_the_parsers_own_error_or_parses(string target, string file)
    {
        FuzzTargets.All[target](File.ReadAllBytes(Path.Combine(Support.Cli.RepoRoot, "fuzz", file)));
    }

    [Fact]
    public void Every_target_has_seeds_and_the_regressions_are_there()
    {
        var inputs = Inputs().Select(row => ((string)row[0], (string)row[1])).ToList();
        foreach (string target in FuzzTargets.All.Keys)
            Assert.Contains(inputs, i => i.Item1 == target && i.Item2.StartsWith("corpus"));
        Assert.Contains(inputs, i => i.Item2.EndsWith("deep-flow.yaml"));
    }
}
