using MergeCluster.Engine.Execution;
using MergeCluster.Merge.Recipes;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Merging;

public class InputSetTests
{
    /// <summary>
    /// An input truncated in place after the merge opened it: reading its mapped pages past the new end would raise
    /// SIGBUS and kill the process (this test host included), so the window must be refused with the file and key.
    /// </summary>
    [Fact]
    public void A_window_of_a_file_truncated_under_the_mapping_is_an_error_naming_the_file_and_key()
    {
        using var dir = new TempDirectory();
        for (int i = 0; i < 2; i++) Checkpoints.Write(dir.File($"m{i}.safetensors"), i + 1, DType.F16);
        File.WriteAllText(dir.File("recipe.yaml"), "models:\n  m0: m0.safetensors\n  m1: m1.safetensors\ncomponents:\n  all: { method: mean, models: [m0, m1] }\noutput: out.safetensors\n");
        var plan = Planning.Planner.Create(Recipe.Load(dir.File("recipe.yaml")));
        var largest = plan.Tensors.MaxBy(t => t.InputBytes)!;
        var (kept, cut) = (largest.Terms.Single(t => t.Input == 0), largest.Terms.Single(t => t.Input == 1));
        int length = (int)cut.Tensor.ByteLength;

        using var inputs = new InputSet(plan);
        using (var file = new FileStream(plan.Inputs[1].Path, FileMode.Open, FileAccess.Write)) file.SetLength(plan.Inputs[1].Header.DataStart);

        var e = Assert.Throws<SafetensorsException>(() => inputs.Window(cut, 0, length).Length);
        Assert.Equal(plan.Inputs[1].Path, e.File);
        Assert.Equal(largest.Output.Key, e.Key);
        Assert.Contains("shrank while it was being read", e.Message);
        Assert.DoesNotContain('\n', e.Message);

        // The other input is untouched and still reads.
        Assert.Equal(length, inputs.Window(kept, 0, length).Length);
        inputs.Release(kept, 0, length);
    }
}
