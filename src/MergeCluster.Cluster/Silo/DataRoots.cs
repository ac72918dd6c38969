using MergeCluster.Merge;

namespace MergeCluster.Cluster.Silo;

/// <summary>A path a silo was asked to open that lies outside its data roots.</summary>
public sealed class DataRootException(string message) : MergeException(message);

/// <summary>
/// The directories a silo may open model, scratch and output files under. Paths are resolved the way the kernel
/// walks them (each existing symlink replaced by its final target before a following "..") and must end inside a
/// root, so neither "../" nor a symlink leads out. Callers open the returned path, never the one they were given.
/// </summary>
public sealed class DataRoots
{
    private const int MaxLinks = 40; // the kernel's ELOOP limit

    /// <summary>The roots as real paths: absolute, symlinks resolved, no trailing separator.</summary>
    public IReadOnlyList<string> Roots { get; }

    public DataRoots(IEnumerable<string> roots)
    {
        var resolved = new List<string>();
        foreach (var root in roots)
        {
            var real = RealPath(Path.GetFullPath(root), root);
            if (!Directory.Exists(real)) throw new DataRootException($"data root {root}: not a directory");
            resolved.Add(real);
        }
        if (resolved.Count == 0) throw new DataRootException("no data root given: a silo needs at least one --data-root");
        Roots = resolved;
    }

    /// <summary>
    /// The real path of <paramref name="path"/> (relative ones resolve against <paramref name="baseDirectory"/>, else the
    /// current directory). Throws <see cref="DataRootException"/> naming the path when it resolves outside every root.
    /// The file itself need not exist yet (an output).
    /// </summary>
    public string Resolve(string path, string? baseDirectory = null)
    {
        var absolute = Path.IsPathRooted(path) ? path : Path.Join(baseDirectory ?? Directory.GetCurrentDirectory(), path);
        var real = RealPath(absolute, path);
        if (Contains(real)) return real;
        var lexical = Path.GetFullPath(absolute);
        var why = Contains(lexical) ? $"leads to {real} through a symlink" : $"resolves to {real}";
        throw new DataRootException($"{path}: outside the data roots ({string.Join(", ", Roots)}); it {why}");
    }

    /// <summary>True when a real path is one of the roots or lies below one.</summary>
    public bool Contains(string realPath) =>
        Roots.Any(root => realPath == root
            || (realPath.StartsWith(root, StringComparison.Ordinal) && (root.EndsWith(Path.DirectorySeparatorChar) || realPath[root.Length] == Path.DirectorySeparatorChar)));

    /// <summary>realpath(3) that tolerates missing trailing components: each existing link is replaced by its target.</summary>
    private static string RealPath(string absolute, string shownAs)
    {
        int links = 0;
        return Walk(absolute);

        string Walk(string path)
        {
            var root = Path.GetPathRoot(path)!;
            var current = root;
            foreach (var part in path[root.Length..].Split(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar))
            {
                if (part is "" or ".") continue;
                if (part == "..")
                {
                    current = Path.GetDirectoryName(current) ?? root;
                    continue;
                }
                var next = Path.Join(current, part);
                FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
                if (info.LinkTarget is null)
                {
                    current = next;
                    continue;
                }
                if (++links > MaxLinks) throw new DataRootException($"{shownAs}: too many levels of symbolic links");
                FileSystemInfo? target;
                try
                {
                    target = info.ResolveLinkTarget(returnFinalTarget: true);
                }
                catch (IOException e)
                {
                    throw new DataRootException($"{shownAs}: cannot resolve the symlink {next}: {e.Message}");
                }
                // The final target's own parents may be links too, so it is walked again from its root.
                current = Walk(target?.FullName ?? next);
            }
            return current.Length > root.Length ? current.TrimEnd(Path.DirectorySeparatorChar) : current;
        }
    }
}
