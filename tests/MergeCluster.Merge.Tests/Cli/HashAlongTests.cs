using System.Security.Cryptography;
using System.Text.Json;
using MergeCluster.Merge.Tests.Merging;
using MergeCluster.Merge.Tests.Support;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Tests.Cli;

/// <summary>
/// `merge --hashing along`: the input hashes taken from the merge's own reads, a window at a time, out of order across
/// two threads and with bytes the merge never reads (headers, components the recipe leaves out), are the files' sha256,
/// and the file written is the one that hashing first writes, byte for byte.
/// </summary>
public class HashAlongTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public HashAlongTests()
    {
        // One tensor of 3 MB, so that with 1 MB shards a file is read in many windows by both threads.
        var tensors = Checkpoints.SdxlLike(DType.F16, [1500, 1000]);
        Checkpoints.Write(_dir.File("a.safetensors"), 1, DType.F16, tensors: tensors);
        Checkpoints.Write(_dir.File("b.safetensors"), 2, DType.F16, key => !key.StartsWith("first_stage_model."), tensors);
        Checkpoints.Write(_dir.File("c.safetensors"), 3, DType.F16, tensors: tensors);
        // The same file under a second path: hashed once, recorded under both model names.
        Posix.HardLink(_dir.File("a.safetensors"), _dir.File("a-link.safetensors"));
    }

    public void Dispose() => _dir.Dispose();

    private CliResult Merge(string hashing, string output, string cache) =>
        Support.Cli.Run(["merge", _dir.File("recipe.yaml"), "--hashing", hashing, "-o", _dir.File(output), "--threads", "2", "--shard-mb", "1"],
            _dir.Path, new Dictionary<string, string?> { ["MERGECLUSTER_CACHE"] = _dir.File(cache) }).EnsureSuccess();

    private static string AutoV2(string path) => Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(path)))[..10];

    [Fact]
    public void Hashes_taken_along_the_merge_are_the_files_sha256_and_the_output_is_that_of_hashing_first()
    {
        // te1 and the VAE are read from no file: the merge never reads those bytes of a, a-link and c.
        File.WriteAllText(_dir.File("recipe.yaml"),
            "models:\n  a: a.safetensors\n  b: b.safetensors\n  c: c.safetensors\n  alias: a-link.safetensors\n"
            + "components:\n  unet: { method: mean, models: [a, b, c, alias] }\n  te0: { method: weighted_sum, models: [c, b], alpha: 0.25 }\n"
            + "output: { path: out.safetensors, dtype: f16 }\n");

        Merge("along", "along.safetensors", "cache-along");
        Merge("first", "first.safetensors", "cache-first");

        using (var merged = SafetensorsFile.Open(_dir.File("along.safetensors")))
        {
            var recorded = JsonSerializer.Deserialize<Dictionary<string, string>>(merged.Header.Metadata["mergecluster.inputs"])!;
            string a = AutoV2(_dir.File("a.safetensors"));
            Assert.Equal(new Dictionary<string, string> { ["a"] = a, ["alias"] = a, ["b"] = AutoV2(_dir.File("b.safetensors")), ["c"] = AutoV2(_dir.File("c.safetensors")) }, recorded);
        }
        Assert.Equal(File.ReadAllBytes(_dir.File("first.safetensors")), File.ReadAllBytes(_dir.File("along.safetensors")));

        // The hashes are cached as hashing first caches them: a second merge reads them from the cache, not the files.
        var cached = File.ReadAllLines(_dir.File("cache-along/hashes.tsv")).Select(l => l[(l.LastIndexOf('\t') + 1)..]).Order();
        Assert.Equal(File.ReadAllLines(_dir.File("cache-first/hashes.tsv")).Select(l => l[(l.LastIndexOf('\t') + 1)..]).Order(), cached);
        Assert.Equal(3, cached.Count());
        Merge("along", "again.safetensors", "cache-along");
        Assert.Equal(File.ReadAllBytes(_dir.File("first.safetensors")), File.ReadAllBytes(_dir.File("again.safetensors")));
    }
}
