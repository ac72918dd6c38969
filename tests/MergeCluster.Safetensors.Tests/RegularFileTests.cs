using static MergeCluster.Safetensors.Tests.SafetensorsFiles;

namespace MergeCluster.Safetensors.Tests;

/// <summary>The file-opening rules every reader and writer goes through, against what a hostile directory holds.</summary>
public class RegularFileTests : IDisposable
{
    private readonly ScratchDirectory _dir = new();
    public void Dispose() => _dir.Dispose();

    private string Victim()
    {
        string victim = _dir.File("victim.txt");
        File.WriteAllText(victim, "the victim's file");
        return victim;
    }

    [Fact]
    public void Creating_refuses_any_existing_entry_a_symlink_included()
    {
        string victim = Victim();
        File.CreateSymbolicLink(_dir.File("link"), victim);
        var e = Assert.Throws<SafetensorsException>(() => RegularFile.CreateNew(_dir.File("link")));
        Assert.Contains("already exists", e.Message);
        Assert.Throws<SafetensorsException>(() => RegularFile.CreateNew(victim));
        Assert.Equal("the victim's file", File.ReadAllText(victim));
    }

    [Fact]
    public void A_file_reopened_for_writing_must_still_be_the_one_created()
    {
        string victim = Victim();
        string temp = _dir.File("temp");
        FileIdentity identity;
        using (var created = RegularFile.CreateNew(temp)) identity = RegularFile.Identity(created);
        using (RegularFile.OpenOwned(temp, identity)) { }

        File.Delete(temp);
        File.CreateSymbolicLink(temp, victim);
        Assert.Contains("symbolic link", Assert.Throws<SafetensorsException>(() => RegularFile.OpenOwned(temp, identity)).Message);
        File.Delete(temp);
        File.Copy(victim, temp);
        Assert.Contains("no longer the temporary file", Assert.Throws<SafetensorsException>(() => RegularFile.OpenOwned(temp, identity)).Message);
        Assert.False(RegularFile.DeleteIfOwned(temp, identity));
        Assert.True(File.Exists(temp));
    }

    [Fact]
    public void Only_regular_files_are_read_and_a_directory_or_device_is_named()
    {
        Assert.Equal(SafetensorsError.NotRegularFile, Assert.Throws<SafetensorsException>(() => RegularFile.OpenRead(_dir.Path)).Error);
        var e = Assert.Throws<SafetensorsException>(() => RegularFile.OpenRead("/dev/null"));
        Assert.Contains("character device", e.Message);
        Assert.Equal(SafetensorsError.NotFound, Assert.Throws<SafetensorsException>(() => RegularFile.OpenRead(_dir.File("absent"))).Error);
        Assert.Contains("NUL", Assert.Throws<SafetensorsException>(() => RegularFile.OpenRead(_dir.File("a\0b"))).Message);
    }

    [Fact]
    public void Identity_is_the_file_not_the_path()
    {
        string file = Victim();
        File.CreateSymbolicLink(_dir.File("link"), file);
        using var handle = RegularFile.OpenRead(file);
        Assert.Equal(RegularFile.Identity(handle), RegularFile.IdentityOf(_dir.File("link")));
        Assert.Equal(RegularFile.IdentityOf(file), RegularFile.IdentityOf(_dir.Path + "/./victim.txt"));
        File.Copy(file, _dir.File("copy"));
        Assert.NotEqual(RegularFile.IdentityOf(file), RegularFile.IdentityOf(_dir.File("copy")));
        Assert.Null(RegularFile.IdentityOf(_dir.File("absent")));
        Assert.True(FileIdentity.TryParse(RegularFile.IdentityOf(file).ToString(), out var parsed) && parsed == RegularFile.IdentityOf(file));
    }

    [Fact]
    public void A_temporary_name_keeps_the_output_name_short_enough_for_NAME_MAX()
    {
        string target = _dir.File(new string('é', 200) + ".safetensors");
        string name = OutputTemp.Name(target, job: 1234567890123, random: "0123456789abcdef");
        Assert.True(System.Text.Encoding.UTF8.GetByteCount(name) <= 255);
        Assert.StartsWith(".éé", name);
        Assert.EndsWith(".mc-job1234567890123-0123456789abcdef.tmp", name);
    }

    [Fact]
    public void Writers_for_one_target_never_share_a_file_and_the_last_commit_wins_whole()
    {
        string target = _dir.File("out.safetensors");
        var layout = SafetensorsLayout.Create([Spec("x", DType.F32, 1000)], null);
        using var first = SafetensorsWriter.Create(target, layout);
        using var second = SafetensorsWriter.Create(target, layout);
        Assert.NotEqual(first.TempPath, second.TempPath);
        first.Write(layout["x"], 0, RandomBytes("first", 4000));
        second.Write(layout["x"], 0, RandomBytes("second", 4000));
        second.Commit();
        first.Commit();
        using var file = SafetensorsFile.Open(target);
        Assert.Equal(RandomBytes("first", 4000), file.Bytes(file.Get("x")).ToArray());
        Assert.Equal([target], Directory.GetFiles(_dir.Path));
    }
}
