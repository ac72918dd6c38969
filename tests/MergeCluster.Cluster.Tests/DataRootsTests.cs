using MergeCluster.Cluster.Tests.Infrastructure;
using MergeCluster.Cluster.Silo;

namespace MergeCluster.Cluster.Tests;

/// <summary>A silo opens files only under its data roots: no "../" and no symlink leads out.</summary>
public sealed class DataRootsTests : IDisposable
{
    private readonly TempDirectory _temp = new();
    private readonly string _root;
    private readonly string _outside;
    private readonly DataRoots _roots;

    public DataRootsTests()
    {
        _root = Directory.CreateDirectory(_temp.File("root")).FullName;
        _outside = Directory.CreateDirectory(_temp.File("outside")).FullName;
        Directory.CreateDirectory(Path.Join(_root, "models"));
        File.WriteAllText(Path.Join(_root, "models", "a.safetensors"), "a");
        File.WriteAllText(Path.Join(_outside, "secret"), "s");
        _roots = new DataRoots([_root]);
    }

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void Paths_inside_a_root_resolve_to_real_paths_including_files_not_written_yet()
    {
        Assert.Equal(Path.Join(_root, "models", "a.safetensors"), _roots.Resolve("models/a.safetensors", _root));
        Assert.Equal(Path.Join(_root, "models", "a.safetensors"), _roots.Resolve(Path.Join(_root, "models", ".", "x", "..", "a.safetensors")));
        Assert.Equal(Path.Join(_root, "out", "new.safetensors"), _roots.Resolve("../out/new.safetensors", Path.Join(_root, "models")));
        Assert.Equal(_root, _roots.Resolve(_root));
    }

    [Fact]
    public void A_dot_dot_escape_is_refused_with_the_path_named()
    {
        var e = Assert.Throws<DataRootException>(() => _roots.Resolve("../outside/secret", _root));
        Assert.StartsWith("../outside/secret: outside the data roots", e.Message);
        Assert.Contains(Path.Join(_outside, "secret"), e.Message);
        Assert.Throws<DataRootException>(() => _roots.Resolve("/etc/passwd"));
    }

    [Fact]
    public void A_sibling_directory_sharing_the_roots_prefix_is_outside()
    {
        var sibling = Directory.CreateDirectory(_root + "2").FullName;
        Assert.Throws<DataRootException>(() => _roots.Resolve(Path.Join(sibling, "x")));
    }

    [Fact]
    public void Symlinks_leading_out_are_refused_whether_to_a_directory_a_file_or_nowhere_yet()
    {
        Directory.CreateSymbolicLink(Path.Join(_root, "dirlink"), _outside);
        File.CreateSymbolicLink(Path.Join(_root, "filelink"), Path.Join(_outside, "secret"));
        File.CreateSymbolicLink(Path.Join(_root, "dangling"), Path.Join(_outside, "not-yet"));
        foreach (var path in new[] { "dirlink/secret", "filelink", "dangling", "dirlink/new-output" })
        {
            var e = Assert.Throws<DataRootException>(() => _roots.Resolve(path, _root));
            Assert.StartsWith($"{path}: outside the data roots", e.Message);
            Assert.Contains("through a symlink", e.Message);
        }
    }

    [Fact]
    public void Dot_dot_after_a_symlink_is_resolved_as_the_kernel_does()
    {
        // root/deep -> outside/inner: "deep/../secret" is outside/secret for open(2), though it looks like root/secret.
        Directory.CreateDirectory(Path.Join(_outside, "inner"));
        Directory.CreateSymbolicLink(Path.Join(_root, "deep"), Path.Join(_outside, "inner"));
        Assert.Throws<DataRootException>(() => _roots.Resolve("deep/../secret", _root));
    }

    [Fact]
    public void Symlinks_that_stay_inside_are_followed_and_a_root_given_through_a_symlink_works()
    {
        File.CreateSymbolicLink(Path.Join(_root, "alias.safetensors"), "models/a.safetensors");
        Assert.Equal(Path.Join(_root, "models", "a.safetensors"), _roots.Resolve("alias.safetensors", _root));

        var linkToRoot = _temp.File("root-link");
        Directory.CreateSymbolicLink(linkToRoot, _root);
        var viaLink = new DataRoots([linkToRoot]);
        Assert.Equal([_root], viaLink.Roots);
        Assert.Equal(Path.Join(_root, "models", "a.safetensors"), viaLink.Resolve(Path.Join(linkToRoot, "models", "a.safetensors")));
    }

    [Fact]
    public void A_symlink_loop_and_a_missing_root_are_clear_errors()
    {
        File.CreateSymbolicLink(Path.Join(_root, "loop1"), Path.Join(_root, "loop2"));
        File.CreateSymbolicLink(Path.Join(_root, "loop2"), Path.Join(_root, "loop1"));
        var loop = Assert.Throws<DataRootException>(() => _roots.Resolve("loop1", _root));
        Assert.StartsWith("loop1: ", loop.Message);

        var missing = Assert.Throws<DataRootException>(() => new DataRoots([_temp.File("nope")]));
        Assert.Contains("nope: not a directory", missing.Message);
    }
}
