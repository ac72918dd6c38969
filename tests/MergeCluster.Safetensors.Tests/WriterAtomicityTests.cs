using static MergeCluster.Safetensors.Tests.SafetensorsFiles;

namespace MergeCluster.Safetensors.Tests;

public class WriterAtomicityTests : IDisposable
{
    private readonly ScratchDirectory _dir = new();
    public void Dispose() => _dir.Dispose();

    private static readonly TensorSpec[] NewSpecs = [Spec("x", DType.F32, 1000), Spec("y", DType.F16, 10, 10)];

    /// <summary>An existing target file, its bytes, and a writer about to replace it.</summary>
    private (string Target, byte[] Original, SafetensorsWriter Writer) ExistingTargetAndWriter()
    {
        string target = _dir.File("model.safetensors");
        Write(target, [Spec("old", DType.BF16, 333)]);
        var original = File.ReadAllBytes(target);
        return (target, original, SafetensorsWriter.Create(target, SafetensorsLayout.Create(NewSpecs, null)));
    }

    private void AssertUntouched(string target, byte[] original, string tempPath)
    {
        Assert.Equal(original, File.ReadAllBytes(target));
        Assert.False(File.Exists(tempPath), "the temporary file was left behind");
        Assert.Equal([target], Directory.GetFiles(_dir.Path));
        using var file = SafetensorsFile.Open(target);
        Assert.Equal("old", file.Tensors.Single().Key);
    }

    [Fact]
    public void The_target_is_untouched_until_commit_and_then_replaced_whole()
    {
        var (target, original, writer) = ExistingTargetAndWriter();
        using (writer)
        {
            Assert.True(File.Exists(writer.TempPath));
            Assert.Equal(Path.GetDirectoryName(target), Path.GetDirectoryName(writer.TempPath));
            writer.Write(writer.Layout["y"], 0, RandomBytes("y", 200));
            writer.Write(writer.Layout["x"], 2000, RandomBytes("x2", 2000));
            writer.Write(writer.Layout["x"], 0, RandomBytes("x1", 2000));
            Assert.Equal(original, File.ReadAllBytes(target));
            writer.Commit();
        }
        Assert.False(File.Exists(writer.TempPath));
        Assert.Equal([target], Directory.GetFiles(_dir.Path));
        using var file = SafetensorsFile.Open(target);
        Assert.Equal([.. RandomBytes("x1", 2000), .. RandomBytes("x2", 2000)], file.Bytes(file.Get("x")).ToArray());
        Assert.Equal(RandomBytes("y", 200), file.Bytes(file.Get("y")).ToArray());
    }

    [Fact]
    public void Disposing_without_commit_keeps_the_target_and_removes_the_temporary_file()
    {
        var (target, original, writer) = ExistingTargetAndWriter();
        using (writer)
            writer.Write(writer.Layout["x"], 0, RandomBytes("x", 4000));
        AssertUntouched(target, original, writer.TempPath);
    }

    [Fact]
    public void A_write_that_fails_midway_keeps_the_target_and_removes_the_temporary_file()
    {
        var (target, original, writer) = ExistingTargetAndWriter();
        Assert.Throws<ArgumentOutOfRangeException>(() =>
        {
            using (writer)
            {
                writer.Write(writer.Layout["x"], 0, RandomBytes("x", 2000));
                writer.Write(writer.Layout["y"], 100, RandomBytes("y", 101)); // one byte past the tensor
                writer.Commit();
            }
        });
        AssertUntouched(target, original, writer.TempPath);
    }

    [Fact]
    public void An_exception_between_writes_keeps_the_target()
    {
        var (target, original, writer) = ExistingTargetAndWriter();
        Assert.Throws<InvalidDataException>(new Action(() =>
        {
            using (writer)
            {
                writer.Write(writer.Layout["x"], 0, RandomBytes("x", 4000));
                throw new InvalidDataException("a source model turned out to be corrupt");
            }
        }));
        AssertUntouched(target, original, writer.TempPath);
    }

    [Fact]
    public void An_output_directory_that_does_not_exist_is_an_Io_error_naming_the_target()
    {
        string target = Path.Combine(_dir.Path, "missing", "out.safetensors");
        var e = Assert.Throws<SafetensorsException>(() => SafetensorsWriter.Create(target, SafetensorsLayout.Create(NewSpecs, null)));
        Assert.Equal(SafetensorsError.Io, e.Error);
        Assert.Contains(target, e.Message);
    }
}
