using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using MergeCluster.Cluster.Tests.Infrastructure;
using MergeCluster.Deploy.Tests.Infrastructure;
using Xunit.Abstractions;

namespace MergeCluster.Deploy.Tests;

/// <summary>
/// The rendered manifests against the real silo, live: the silo container of `kubectl kustomize deploy` run as its
/// pod would run it (the published image's /app/mergecluster in a sandbox as UID 1654 on a read-only root, the pod's
/// volumes, the image's environment and the container's env resolved as the kubelet does, the container's args),
/// against Azurite. Its probes are probed as the kubelet probes them, its metrics scraped where its annotations say,
/// the submit Job run with its own args and mounts, and SIGTERM drains it. Only the ports move: pods have a network
/// namespace each, the sandboxes share the host's.
/// </summary>
public sealed partial class SiloPodTests(ITestOutputHelper output)
{
    private const string PodName = "mergecluster-silo-6c9f8d7b5-x2k7q", NodeName = "node-1";
    private static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(30) };

    [Fact]
    public async Task The_deploy_silo_pod_passes_its_probes_serves_the_autoscaler_gauges_runs_the_submit_job_and_drains()
    {
        var manifest = Installs.Get("deploy");
        var deployment = Installs.SiloDeployment(manifest);
        var podSpec = deployment["spec"]!["template"]!["spec"]!.AsObject();
        var container = Installs.SiloContainer(manifest);
        Assert.Null(container["command"]); // the image's ENTRYPOINT runs the args
        await using var storage = await Azurite.StartAsync();
        using var volume = new TempDirectory("mergecluster-pod-volume");
        using var scratch = new TempDirectory("mergecluster-pod-scratch");

        // The models the example recipe names, on the shared volume where deploy/loader puts them.
        var submit = Manifest.Kustomize("deploy/submit");
        var job = Assert.Single(submit.OfKind("Job"));
        var client = Installs.Container(job, "submit");
        string recipe = (string)Assert.Single(submit.OfKind("ConfigMap"))["data"]!["recipe.yaml"]!;
        var models = ModelLine().Matches(recipe).Select(m => m.Groups[1].Value).ToList();
        Assert.NotEmpty(models);
        string outputPath = OutputLine().Match(recipe).Groups[1].Value;
        var tools = new PodSandbox().Mount(volume.Path, "/data");
        foreach (var (model, seed) in models.Select((m, i) => (m, i)))
        {
            Directory.CreateDirectory(OnVolume(volume, Path.GetDirectoryName(model)!));
            tools.Run(["synth", "--arch", "sdxl", "--seed", seed.ToString(), "--scale", "0.04", "-o", model]).Success();
        }
        Directory.CreateDirectory(OnVolume(volume, Path.GetDirectoryName(outputPath)!));

        var ports = container["ports"]!.AsArray().ToDictionary(p => (int)p!["containerPort"]!, _ => FreePort());
        var args = MovePorts(Installs.Args(container), ports);
        var options = SiloContract.Parse(args, SiloContract.Options);
        string clusterId = options.Single(o => o.Option == "--cluster-id").Value!;
        string siloPort = options.SingleOrDefault(o => o.Option == "--silo-port").Value ?? ports[SiloContract.DefaultSiloPort].ToString();
        var pod = new PodSandbox().MountVolumes(podSpec, container, manifest, new Dictionary<string, string> { ["mergecluster-data"] = volume.Path }, scratch.File("silo"));
        foreach (var (key, value) in PodEnvironment.Resolve(container, Fields(deployment, PodName), Secrets(storage))) pod.Environment[key] = value;

        // The kubelet's probes, on the container port each names.
        async Task<bool> Probe(string kind)
        {
            var get = container[kind]?["httpGet"] ?? throw new Xunit.Sdk.XunitException($"the silo has no {kind}");
            int port = ports[Installs.ResolvePort(container, get["port"]!)];
            try
            {
                using var response = await Http.GetAsync($"http://127.0.0.1:{port}{(string)get["path"]!}");
                return (int)response.StatusCode is >= 200 and < 400;
            }
            catch (HttpRequestException)
            {
                return false;
            }
        }

        // While storage does not answer the silo cannot join: it has started (and lives), but it is not ready.
        storage.Freeze();
        await using var silo = SiloProcess.Attach(pod.Start(args), PodName, PodSandbox.Entrypoint);
        try
        {
            await RunPodAsync();
        }
        finally
        {
            output.WriteLine($"---- {PodName} ----\n{silo.Output}");
        }

        async Task RunPodAsync()
        {
        try
        {
            await Poll.UntilAsync(() => Probe("startupProbe"), $"the startup probe passes\n{silo.Output}", TimeSpan.FromMinutes(2));
            Assert.True(await Probe("livenessProbe"));
            Assert.False(await Probe("readinessProbe"), "ready before it could join");
        }
        finally
        {
            storage.Thaw();
        }
        await Poll.UntilAsync(() => Probe("readinessProbe"), $"the readiness probe passes once the silo joins\n{silo.Output}", TimeSpan.FromMinutes(2));
        // Its name from the Downward API, its cluster from the args, its address from POD_IP.
        await silo.WaitForOutputAsync("is ready");
        Assert.Matches($@"silo {PodName}: joined cluster {clusterId} at S127\.0\.0\.1:{siloPort}:", silo.Output);

        // Prometheus scrapes where the pod's annotations say; the autoscaler's query reads gauges the silo exports.
        var annotations = deployment["spec"]!["template"]!["metadata"]!["annotations"]!;
        string metrics = $"http://127.0.0.1:{ports[int.Parse((string)annotations["prometheus.io/port"]!)]}{(string)annotations["prometheus.io/path"]!}";
        async Task<PrometheusText> Scrape() => PrometheusText.Parse(await Http.GetStringAsync(metrics));
        var gauges = new[] { "deploy/base+keda", "deploy/overlays/production", "helm ci/keda-values.yaml" }
            .SelectMany(i => MetricName().Matches((string)Installs.Get(i).Get("ScaledObject", "mergecluster-silo")["spec"]!["triggers"]![0]!["metadata"]!["query"]!))
            .Select(m => m.Value).Distinct().Order().ToList();
        Assert.Equal([SiloContract.PendingTasksMetric, SiloContract.RunningTasksMetric], gauges);
        var idle = await Scrape();
        Assert.All(gauges, g => Assert.Equal(("gauge", 0.0), (idle.Types.GetValueOrDefault(g), idle.Sum(g))));

        // The submit Job as its manifest runs it: the recipe from its ConfigMap at /recipe, outside every data root
        // of the silo, naming models and output by absolute paths on the volume; no volume of its own.
        var submitter = new PodSandbox().MountVolumes(job["spec"]!["template"]!["spec"]!.AsObject(), client, submit, new Dictionary<string, string>(), scratch.File("submit"));
        foreach (var (key, value) in PodEnvironment.Resolve(client, Fields(job, "mergecluster-submit-abcde"), Secrets(storage))) submitter.Environment[key] = value;
        var jobArgs = Installs.Args(client);
        var run = submitter.Run(jobArgs);
        Assert.True(run.ExitCode == 0, $"{run.CommandLine}: {run.ExitCode}\n{run.Stdout}{run.Stderr}\n{silo.Output}");
        long id = long.Parse(run.Stdout.Split('\n')[0].Trim());
        Assert.Contains($"job {id}: succeeded", run.Stderr);
        Assert.True(File.Exists(OnVolume(volume, outputPath)), $"no {outputPath} on the volume");

        // The same Job with many small tasks: while it waits, the gauges the autoscaler reads count its tasks. Storage
        // is frozen the moment the silo logs the submission, which it does once the submission is stored and before
        // it plans: the plan's own save then waits, no task is handed out, and all of them stay pending until it thaws.
        var frozen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        silo.OnLine(line => line.Contains(": submitted (", StringComparison.Ordinal), () => { storage.Freeze(); frozen.SetResult(); });
        var tree = Task.Run(() => submitter.Run([.. jobArgs, "--shape", "tree", "--shard-mb", "1"]));
        double most = 0;
        int samples = 0;
        try
        {
            await Task.WhenAny(frozen.Task, tree);
            Assert.True(frozen.Task.IsCompleted, $"the tree job ended without its submission being logged\n{silo.Output}");
            await Poll.UntilAsync(async () =>
            {
                var m = await Scrape();
                most = Math.Max(most, m.Sum(SiloContract.PendingTasksMetric) + m.Sum(SiloContract.RunningTasksMetric));
                samples++;
                return most > 0;
            }, "the gauges count the planned job's tasks", TimeSpan.FromSeconds(20));
        }
        finally
        {
            storage.Thaw();
        }
        var treeRun = await tree;
        Assert.True(treeRun.ExitCode == 0, $"{treeRun.Stdout}{treeRun.Stderr}\n{silo.Output}");
        output.WriteLine($"{samples} scrapes while the tree job waited on storage; most pending + running: {most}");
        long treeId = long.Parse(treeRun.Stdout.Split('\n')[0].Trim());
        Assert.Matches($@"job {treeId}: planned merge, \d+ tasks \(Tree\)", silo.Output);
        await Poll.UntilAsync(async () => { var m = await Scrape(); return m.Sum(SiloContract.PendingTasksMetric) + m.Sum(SiloContract.RunningTasksMetric) == 0; },
            "the gauges are back to zero after the job");

        // Scale-in: the kubelet's SIGTERM reaches the entrypoint, which drains and exits 0.
        silo.Terminate();
        Assert.Equal(0, await silo.WaitForExitAsync());
        Assert.Contains("drained and left", silo.Output);
        foreach (var text in new[] { silo.Output, run.Stdout + run.Stderr, treeRun.Stdout + treeRun.Stderr })
            Assert.DoesNotContain(storage.Key, text);
        }
    }

    /// <summary>The Downward API fields the manifests read, for a pod named <paramref name="pod"/> of <paramref name="owner"/>.</summary>
    private static Dictionary<string, string> Fields(JsonObject owner, string pod) => new()
    {
        ["metadata.name"] = pod,
        ["metadata.namespace"] = (string)owner["metadata"]!["namespace"]!,
        ["status.podIP"] = "127.0.0.1",
        ["spec.nodeName"] = NodeName,
    };

    /// <summary>The Secret the docs have users create (dev: the Azurite overlay), holding this Azurite's connection string.</summary>
    private static Dictionary<(string, string), string> Secrets(Azurite storage) => new() { [("mergecluster-storage", "connection-string")] = storage.ConnectionString };

    /// <summary>The args with each Orleans and HTTP port moved to the free host port standing in for it ("--x-port=P" or "--x-port P").</summary>
    private static List<string> MovePorts(List<string> args, Dictionary<int, int> ports)
    {
        var moved = new List<string>(args);
        for (int i = 0; i < moved.Count; i++)
        {
            var m = PortOption().Match(moved[i]);
            if (m.Success && m.Groups[2].Success) moved[i] = $"{m.Groups[1].Value}={Moved(m.Groups[2].Value)}";
            else if (m.Success && i + 1 < moved.Count) moved[i + 1] = Moved(moved[++i]).ToString();
        }
        return moved;

        int Moved(string port) => ports.TryGetValue(int.Parse(port), out int host) ? host
            : throw new Xunit.Sdk.XunitException($"the silo is given port {port}, which the container does not declare");
    }

    private static string OnVolume(TempDirectory volume, string path) =>
        path.StartsWith("/data/", StringComparison.Ordinal) ? volume.File(path["/data/".Length..]) : throw new Xunit.Sdk.XunitException($"{path} is not on the volume");

    private static int FreePort() => TestPorts.Free();

    [GeneratedRegex(@"^\s+\w+:\s+(/\S+\.safetensors)\s*$", RegexOptions.Multiline)]
    private static partial Regex ModelLine();

    [GeneratedRegex(@"^output:.*\bpath:\s+(/[^\s,}]+)", RegexOptions.Multiline)]
    private static partial Regex OutputLine();

    [GeneratedRegex(@"\bmergecluster_\w+")]
    private static partial Regex MetricName();

    [GeneratedRegex(@"^(--(?:silo|gateway|http)-port)(?:=(\d+))?$")]
    private static partial Regex PortOption();
}
