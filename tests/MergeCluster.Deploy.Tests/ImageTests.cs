using System.Text.Json.Nodes;
using MergeCluster.Deploy.Tests.Infrastructure;

namespace MergeCluster.Deploy.Tests;

/// <summary>
/// deploy/Dockerfile and the pods that run its image agree: the user, the ports, and every path the process writes
/// is a volume the pod mounts. No container engine is here, so the image itself is not built; instead the CLI is
/// published exactly as the Dockerfile publishes it (deploy/publish.sh) and run as the image's user with a read-only
/// root, only the pod's volumes writable and the image's environment: the merge a user would run must work.
/// </summary>
public class ImageTests
{
    private static readonly Dockerfile Image = Dockerfile.Load(Tool.RepoPath("deploy/Dockerfile"));

    [Fact]
    public void ImageRunsAsThePodsNonRootUser()
    {
        string user = Image.Single("USER");
        var ids = user.Split(':').Select(int.Parse).ToArray();
        Assert.True(ids[0] > 0, "the image's USER must be a numeric non-root uid, so runAsNonRoot can be checked");
        foreach (var manifest in new[] { Installs.Get("deploy"), Installs.Get("helm"), Manifest.Kustomize("deploy/submit") })
            foreach (var (owner, spec, _) in manifest.PodTemplates().Where(p => UsesImage(p.PodSpec)))
            {
                Assert.Equal(ids[0], (int?)spec["securityContext"]!["runAsUser"]);
                Assert.Equal(ids.Length > 1 ? ids[1] : ids[0], (int?)spec["securityContext"]!["runAsGroup"]);
            }
    }

    [Fact]
    public void EverythingTheProcessWritesIsAMountedVolume()
    {
        var env = Image.Environment();
        foreach (var install in new[] { "deploy", "deploy/overlays/production", "helm" })
        {
            var manifest = Installs.Get(install);
            var deployment = Installs.SiloDeployment(manifest);
            var container = Installs.SiloContainer(manifest);
            foreach (var variable in new[] { "TMPDIR", "HOME", "MERGECLUSTER_CACHE" })
            {
                Assert.True(env.TryGetValue(variable, out var path) && path.StartsWith('/'), $"the image sets no absolute {variable}");
                Assert.True(WritableMount(deployment, container, path) is not null, $"{install}: {variable}={path} is on the read-only root");
            }
            Assert.NotNull(WritableMount(deployment, container, Image.Single("WORKDIR")));
        }
        // The base image's ASPNETCORE_HTTP_PORTS=8080 would make Kestrel listen where --http-port did not say.
        Assert.Equal("", env["ASPNETCORE_HTTP_PORTS"]);
    }

    [Fact]
    public void ImageExposesTheSilosPorts()
    {
        var exposed = Image.Single("EXPOSE").Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).Order();
        var container = Installs.SiloContainer(Installs.Get("deploy"));
        Assert.Equal(container["ports"]!.AsArray().Select(p => (int)p!["containerPort"]!).Order(), exposed);
        Assert.Equal("[\"/app/mergecluster\"]", Image.Single("ENTRYPOINT"));
    }

    [Fact]
    public void ImageIsPublishedByThePublishScript()
    {
        // The flags the next test runs are the flags the image ships.
        var build = Image.Stages[0];
        Assert.Contains(build, i => i.Instruction == "RUN" && i.Arguments.Contains("deploy/publish.sh /app", StringComparison.Ordinal));
        Assert.Contains(Image.Image, i => i.Instruction == "COPY" && i.Arguments.Contains("--from=build") && i.Arguments.EndsWith("/app /app", StringComparison.Ordinal));
        string script = File.ReadAllText(Tool.RepoPath("deploy/publish.sh"));
        Assert.Contains("--self-contained true", script);
        Assert.Contains("-p:PublishReadyToRun=true", script);
    }

    [Fact]
    public void PublishedCliMergesAsTheImageUserOnAReadOnlyRoot()
    {
        using var work = new TempTree();
        string app = work.Path("app"), tmp = work.Path("tmp"), data = work.Path("data");
        Tool.Run(Tool.RepoPath("deploy/publish.sh"), [app], environment: new Dictionary<string, string> { ["MERGECLUSTER_PUBLISH_ARTIFACTS"] = work.Path("artifacts") },
            timeout: TimeSpan.FromMinutes(10)).Success();
        Assert.True(File.Exists(Path.Combine(app, "mergecluster")), "publish made no self-contained executable");
        Assert.False(File.Exists(Path.Combine(app, "mergecluster.runtimeconfig.json")) && !File.Exists(Path.Combine(app, "libcoreclr.so")),
            "the publish is framework-dependent: the image has no .NET runtime");
        Directory.CreateDirectory(tmp);
        Directory.CreateDirectory(data);

        Assert.Contains("merge", Sandboxed(app, tmp, data, ["--help"]).Success());
        string demo = Sandboxed(app, tmp, data, ["demo", "--dir", "/data/demo"]).Success();
        Assert.Contains("bit-identical", demo);
        Assert.True(File.Exists(Path.Combine(data, "demo", "mix.safetensors")));
        // The input hashes were cached where the image's MERGECLUSTER_CACHE points, on the pod's /tmp volume.
        string cache = Image.Environment()["MERGECLUSTER_CACHE"];
        Assert.StartsWith("/tmp/", cache);
        Assert.True(File.Exists(Path.Combine(tmp, cache["/tmp/".Length..], "hashes.tsv")), $"no hash cache under {cache}");
    }

    /// <summary>
    /// Runs /app/mergecluster as the image's user in a new root: the host's /usr and /etc read-only (standing in for
    /// the base image's), the published app read-only at /app, writable /tmp and /data as the pod mounts them, the
    /// root remounted read-only, and only the image's environment.
    /// </summary>
    private static ToolResult Sandboxed(string app, string tmp, string data, IEnumerable<string> args)
    {
        string bwrap = File.Exists("/usr/bin/bwrap") ? "/usr/bin/bwrap"
            : throw new InvalidOperationException("bubblewrap is missing: apt-get install bubblewrap (scripts/test.sh does)");
        var ids = Image.Single("USER").Split(':');
        var sandbox = new List<string>
        {
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
            "--ro-bind", "/etc", "/etc", "--ro-bind", app, "/app", "--bind", tmp, "/tmp", "--bind", data, "/data",
            "--dev", "/dev", "--proc", "/proc", "--remount-ro", "/",
            "--unshare-user", "--uid", ids[0], "--gid", ids.Length > 1 ? ids[1] : ids[0], "--unshare-pid", "--die-with-parent",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--chdir", Image.Single("WORKDIR"),
        };
        foreach (var (key, value) in Image.Environment()) sandbox.AddRange(["--setenv", key, value]);
        sandbox.Add("/app/mergecluster");
        sandbox.AddRange(args);
        return Tool.Run(bwrap, sandbox, timeout: TimeSpan.FromMinutes(5));
    }

    private static bool UsesImage(JsonObject podSpec) =>
        podSpec["containers"]!.AsArray().Any(c => ((string?)c!["image"])?.Contains("mergecluster", StringComparison.Ordinal) == true);

    /// <summary>The writable volume mount of <paramref name="container"/> that holds <paramref name="path"/>, if any.</summary>
    private static JsonNode? WritableMount(JsonObject deployment, JsonObject container, string path)
    {
        var volumes = deployment["spec"]!["template"]!["spec"]!["volumes"]!.AsArray();
        return container["volumeMounts"]!.AsArray().FirstOrDefault(m =>
        {
            string mount = ((string)m!["mountPath"]!).TrimEnd('/');
            bool under = path == mount || path.StartsWith(mount + "/", StringComparison.Ordinal);
            var volume = volumes.Single(v => (string?)v!["name"] == (string?)m["name"])!;
            bool writable = (bool?)m["readOnly"] != true && (volume["emptyDir"] is not null || volume["persistentVolumeClaim"] is not null);
            return under && writable;
        });
    }

    private sealed class TempTree : IDisposable
    {
        private readonly string _root = Directory.CreateTempSubdirectory("mergecluster-image-").FullName;
        public string Path(string name) => System.IO.Path.Combine(_root, name);
        public void Dispose() => Directory.Delete(_root, recursive: true);
    }
}
