namespace MergeCluster.Cluster.Tests.Infrastructure;

/// <summary>A directory under /tmp removed with everything in it when disposed.</summary>
public sealed class TempDirectory : IDisposable
{
    public string Path { get; }

    public TempDirectory(string prefix = "mergecluster-test")
    {
        Path = Directory.CreateTempSubdirectory(prefix + "-").FullName;
    }

    public string File(string name) => System.IO.Path.Join(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // A process killed mid-write may still hold a file; /tmp is cleaned eventually.
        }
    }
}
