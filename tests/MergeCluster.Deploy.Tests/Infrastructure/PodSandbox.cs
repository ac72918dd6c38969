using System.Diagnostics;
using System.Text.Json.Nodes;

namespace MergeCluster.Deploy.Tests.Infrastructure;

/// <summary>
/// A container of the image as a pod runs it, without a container engine: bubblewrap gives /app/mergecluster a new
/// root with the host's /usr and /etc read-only (standing in for the base image's), the published app read-only at
/// /app, the pod's volume mounts, the root remounted read-only, the image's user (its own user namespace), its own
/// PID namespace with the process as PID 1 (as a container's entrypoint is), the image's working directory (which
/// the image has, volume or not) and only the given environment. The network is the host's: where a pod has its own, the tests move ports apart.
/// </summary>
internal sealed class PodSandbox
{
    private readonly List<(string Host, string Path, bool ReadOnly)> _mounts = [];

    /// <summary>The variables the process sees: the image's ENV, then the container's env over them.</summary>
    public Dictionary<string, string> Environment { get; } = new(PublishedImage.Dockerfile.Environment());

    public PodSandbox Mount(string host, string path, bool readOnly = false)
    {
        _mounts.Add((host, path, readOnly));
        return this;
    }

    /// <summary>
    /// The container's volume mounts, each resolved from the pod's volumes: a claim to the host directory
    /// <paramref name="claims"/> names for it, an emptyDir to a fresh directory under <paramref name="scratch"/>, a
    /// ConfigMap to its files as <paramref name="manifest"/> renders them.
    /// </summary>
    public PodSandbox MountVolumes(JsonObject podSpec, JsonObject container, Manifest manifest, IReadOnlyDictionary<string, string> claims, string scratch)
    {
        foreach (var mount in container["volumeMounts"]?.AsArray() ?? [])
        {
            string name = (string)mount!["name"]!;
            var volume = podSpec["volumes"]!.AsArray().Single(v => (string?)v!["name"] == name)!;
            string host;
            if (volume["persistentVolumeClaim"]?["claimName"] is { } claim)
            {
                host = claims.TryGetValue((string)claim!, out var dir) ? dir : throw new Xunit.Sdk.XunitException($"no directory stands in for claim {claim}");
            }
            else if (volume["emptyDir"] is not null)
            {
                host = Directory.CreateDirectory(Path.Combine(scratch, name)).FullName;
            }
            else if (volume["configMap"]?["name"] is { } configMap)
            {
                host = Directory.CreateDirectory(Path.Combine(scratch, name)).FullName;
                foreach (var (file, text) in manifest.Get("ConfigMap", (string)configMap!)["data"]!.AsObject())
                    File.WriteAllText(Path.Combine(host, file), (string)text!);
            }
            else
            {
                throw new Xunit.Sdk.XunitException($"volume {name}: a kind the sandbox does not stand in for");
            }
            Mount(host, (string)mount["mountPath"]!, (bool?)mount["readOnly"] == true);
        }
        return this;
    }

    /// <summary>bwrap with the sandbox around <c>/app/mergecluster ARGS</c>.</summary>
    public ProcessStartInfo StartInfo(IEnumerable<string> args)
    {
        var image = PublishedImage.Dockerfile;
        var ids = image.Single("USER").Split(':');
        var info = new ProcessStartInfo(Bwrap) { UseShellExecute = false };
        var sandbox = new List<string>
        {
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
            "--ro-bind", "/etc", "/etc", "--ro-bind", PublishedImage.App, "/app",
            // WORKDIR exists in the image even where no volume is mounted on it.
            "--dir", image.Single("WORKDIR"),
        };
        foreach (var (host, path, readOnly) in _mounts) sandbox.AddRange([readOnly ? "--ro-bind" : "--bind", host, path]);
        sandbox.AddRange(
        [
            "--dev", "/dev", "--proc", "/proc", "--remount-ro", "/",
            "--unshare-user", "--uid", ids[0], "--gid", ids.Length > 1 ? ids[1] : ids[0], "--unshare-pid", "--as-pid-1", "--die-with-parent",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--chdir", image.Single("WORKDIR"),
        ]);
        foreach (var (key, value) in Environment) sandbox.AddRange(["--setenv", key, value]);
        sandbox.Add("/app/mergecluster");
        sandbox.AddRange(args);
        foreach (var arg in sandbox) info.ArgumentList.Add(arg);
        return info;
    }

    /// <summary>
    /// Starts <c>/app/mergecluster ARGS</c> in the sandbox to run on (a silo), stdout and stderr redirected. bwrap's
    /// --die-with-parent follows the thread that started it, not the process, so that thread is one of its own that
    /// lives until the sandbox exits: the sandbox dies with the test process and not before.
    /// </summary>
    public Process Start(IEnumerable<string> args)
    {
        var info = StartInfo(args);
        info.RedirectStandardOutput = info.RedirectStandardError = true;
        var started = new TaskCompletionSource<Process>(TaskCreationOptions.RunContinuationsAsynchronously);
        var launcher = new Thread(() =>
        {
            Process process;
            try { process = Process.Start(info)!; }
            catch (Exception e) { started.SetException(e); return; }
            started.SetResult(process);
            process.WaitForExit();
        }) { IsBackground = true, Name = "bwrap launcher" };
        launcher.Start();
        return started.Task.GetAwaiter().GetResult();
    }

    /// <summary>Runs <c>/app/mergecluster ARGS</c> in the sandbox to its end.</summary>
    public ToolResult Run(IEnumerable<string> args, TimeSpan? timeout = null)
    {
        var info = StartInfo(args);
        return Tool.Run(info.FileName, info.ArgumentList, timeout: timeout ?? TimeSpan.FromMinutes(5));
    }

    /// <summary>The process bwrap started (with --as-pid-1, its only child): what a kubelet's SIGTERM reaches.</summary>
    public static int Entrypoint(Process bwrap)
    {
        for (int i = 0; i < 200; i++)
        {
            string children = File.ReadAllText($"/proc/{bwrap.Id}/task/{bwrap.Id}/children").Trim();
            if (children.Length > 0) return int.Parse(children.Split(' ')[0]);
            Thread.Sleep(10);
        }
        throw new InvalidOperationException($"bwrap {bwrap.Id} started no process");
    }

    public static string Bwrap => File.Exists("/usr/bin/bwrap") ? "/usr/bin/bwrap"
        : throw new InvalidOperationException("bubblewrap is missing: apt-get install bubblewrap (scripts/test.sh does)");
}
