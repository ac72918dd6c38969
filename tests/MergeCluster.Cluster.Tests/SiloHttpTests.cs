using System.Net;
using System.Net.Sockets;
using MergeCluster.Cluster.Contracts;
using MergeCluster.Cluster.Tests.Infrastructure;
using Xunit.Abstractions;

namespace MergeCluster.Cluster.Tests;

/// <summary>
/// The silo's HTTP endpoint on real <c>mergecluster silo</c> processes and real Azurite: what the probes say while a
/// silo joins, works and drains (storage frozen to hold it in each state), the autoscaler's gauges as Prometheus
/// scrapes them during a job on two silos, the Orleans Dashboard, and no listener at all without --http-port.
/// </summary>
[Collection(ProcessTests.Name)]
public sealed class SiloHttpTests(ITestOutputHelper output)
{
    private static readonly Dictionary<string, string> NoEnvironment = [];
    private static readonly HttpClient Http = new(new SocketsHttpHandler { AllowAutoRedirect = false }) { Timeout = TimeSpan.FromSeconds(30) };

    [Fact]
    public async Task Healthz_answers_while_the_silo_joins_and_drains_and_readyz_only_while_it_takes_work()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output, ownStorage: true);
        int port = ClusterFixture.FreePort();

        // Storage that does not answer holds the silo in its join.
        cluster.Storage.Freeze();
        var silo = await cluster.LaunchSiloAsync("s1", NoEnvironment, "--threads", "1", "--http-port", port.ToString());
        await Poll.UntilAsync(async () => (await GetAsync(port, "/healthz")).Status == 200, $"/healthz answers while the silo joins\n{silo.Output}");
        Assert.Equal((200, "alive\n"), await GetAsync(port, "/healthz"));
        Assert.Equal((503, "joining\n"), await GetAsync(port, "/readyz"));
        Assert.DoesNotContain("is ready", silo.Output);

        cluster.Storage.Thaw();
        await silo.WaitForOutputAsync("is ready");
        Assert.Equal((200, "ready\n"), await GetAsync(port, "/readyz"));
        Assert.Equal((200, "alive\n"), await GetAsync(port, "/healthz"));

        // SIGTERM with storage frozen again: the drain cannot finish (the silo leaves the membership table last), and
        // for as long as it waits the process stays up, alive and not ready. System.CommandLine's own SIGTERM
        // handling would end it after two seconds; this holds it twice that.
        cluster.Storage.Freeze();
        silo.Terminate();
        await silo.WaitForOutputAsync("draining");
        var holdUntil = DateTime.UtcNow + TimeSpan.FromSeconds(4);
        int looks = 0;
        while (DateTime.UtcNow < holdUntil || looks < 3)
        {
            Assert.False(silo.HasExited, $"the silo exited mid-drain:\n{silo.Output}");
            Assert.Equal((503, "draining\n"), await GetAsync(port, "/readyz"));
            Assert.Equal((200, "alive\n"), await GetAsync(port, "/healthz"));
            looks++;
            await Task.Delay(250);
        }
        cluster.Storage.Thaw();
        Assert.Equal(0, await silo.WaitForExitAsync());
        Assert.Contains("drained and left", silo.Output);
        Assert.Equal(-1, (await GetAsync(port, "/healthz")).Status);
    }

    [Fact]
    public async Task Metrics_give_each_silo_the_tasks_of_the_job_grains_it_hosts_as_mergecluster_gauges_beside_orleans_meter()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        string recipe = await MergeInputs.WriteAsync(cluster.Root);
        int[] ports = [ClusterFixture.FreePort(), ClusterFixture.FreePort()];
        var silos = new[]
        {
            await cluster.StartSiloAsync("s1", "--threads", "1", "--http-port", ports[0].ToString()),
            await cluster.StartSiloAsync("s2", "--threads", "1", "--http-port", ports[1].ToString()),
        };
        foreach (int port in ports)
        {
            var idle = await ScrapeAsync(port);
            // The exporter's final names: no unit suffix on the gauges (their unit is {task}), _total on counters.
            Assert.Equal("gauge", idle.Types.GetValueOrDefault("mergecluster_tasks_pending"));
            Assert.Equal("gauge", idle.Types.GetValueOrDefault("mergecluster_tasks_running"));
            Assert.Equal((0, 0), (idle.Sum("mergecluster_tasks_pending"), idle.Sum("mergecluster_tasks_running")));
            Assert.Equal((1, 1), (idle.Sum("mergecluster_silo_ready"), idle.Sum("mergecluster_silo_slots")));
            Assert.Contains(idle.Names, n => n.StartsWith("orleans_", StringComparison.Ordinal)); // the Microsoft.Orleans meter
        }

        // Storage is frozen the moment the job grain's silo logs the submission, which it does once the submission is
        // stored and before it plans: the plan's save waits, so its tasks stay pending while both silos are scraped,
        // however fast the job would otherwise run. Then it thaws and the scrapes go on until the job ends.
        int froze = 0;
        foreach (var silo in silos)
            silo.OnLine(line => line.Contains(": submitted (", StringComparison.Ordinal), () => { if (Interlocked.Exchange(ref froze, 1) == 0) cluster.Storage.Freeze(); });
        long id = await cluster.SubmitAsync(recipe, "--shard-mb", "1", "--shape", "tree");
        var samples = new List<(int Silo, double Pending, double Running)>();
        async Task ScrapeBothAsync()
        {
            for (int i = 0; i < ports.Length; i++)
            {
                var m = await ScrapeAsync(ports[i]);
                samples.Add((i, m.Sum("mergecluster_tasks_pending"), m.Sum("mergecluster_tasks_running")));
            }
        }
        try
        {
            await Poll.UntilAsync(() => Volatile.Read(ref froze) == 1, "the job grain's silo logs the submission");
            await Poll.UntilAsync(async () => { await ScrapeBothAsync(); return samples.Any(s => s.Pending + s.Running > 0); },
                "a silo's gauges count the waiting job's tasks", TimeSpan.FromSeconds(20));
        }
        finally
        {
            cluster.Storage.Thaw();
        }
        string? coordinator = null;
        JobStatus status;
        while (true)
        {
            await ScrapeBothAsync();
            status = await cluster.StatusAsync(id);
            coordinator = status.Coordinator ?? coordinator;
            if (status.State is JobPhase.Succeeded or JobPhase.Failed or JobPhase.Cancelled) break;
        }
        Assert.True(status.State == JobPhase.Succeeded, status.Error + cluster.AllSiloOutput);
        int host = Array.FindIndex(silos, s => s.Name == coordinator);
        Assert.True(host >= 0, $"no coordinator seen ({coordinator})");
        int other = 1 - host;
        output.WriteLine($"{samples.Count} samples; job grain on {silos[host].Name}; its most pending+running: {samples.Where(s => s.Silo == host).Max(s => s.Pending + s.Running)}");

        // The job grain's silo reports the job's tasks; the other silo ran tasks too, yet reports none: each silo
        // counts the jobs whose grain it hosts, so the sum over silos is the cluster's.
        Assert.Contains(samples, s => s.Silo == host && s.Pending + s.Running > 0);
        Assert.Contains($"job {id} task s", silos[other].Output);
        Assert.All(samples.Where(s => s.Silo == other), s => Assert.Equal((0.0, 0.0), (s.Pending, s.Running)));

        // Once the exporter's cached response (300 ms) has expired, the job grain's silo reports no task either, and
        // the counters (task attempts by how they ended, the bytes the tasks moved), summed over the silos that ran
        // them, reach the job's figures. A silo counts a task once it has reported it, so the job grain can see the
        // last tasks done a moment before their silos' counters do: the scrape is repeated until they agree.
        PrometheusText[] after = [];
        double Done() => after.Sum(m => m.Samples.Where(s => s.Name == "mergecluster_tasks_total" && s.Labels.GetValueOrDefault("state") == "done").Sum(s => s.Value));
        await Poll.UntilAsync(async () =>
        {
            after = await Task.WhenAll(ports.Select(ScrapeAsync));
            return after.All(m => m.Sum("mergecluster_tasks_pending") == 0 && m.Sum("mergecluster_tasks_running") == 0)
                && Done() == status.Tasks.Done
                && after.Sum(m => m.Sum("mergecluster_io_read_bytes_total")) == status.BytesRead
                && after.Sum(m => m.Sum("mergecluster_io_written_bytes_total")) == status.BytesWritten;
        }, $"both silos report no pending or running task after the job, and counters equal to its {status.Tasks.Done} tasks done, " +
           $"{status.BytesRead} bytes read and {status.BytesWritten} written");
        Assert.Equal("counter", after[0].Types.GetValueOrDefault("mergecluster_tasks_total"));
    }

    [Fact]
    public async Task A_silo_without_http_port_listens_on_its_two_orleans_ports_only_and_loads_no_kestrel()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        var plain = await cluster.StartSiloAsync("plain", "--threads", "1");
        Assert.Equal(2, ProcessSockets.ListeningPorts(plain.Pid).Count);
        // Orleans' own networking uses Microsoft.AspNetCore.Connections.Abstractions; nothing of the web host loads.
        Assert.DoesNotContain(ProcessSockets.MappedFiles(plain.Pid).Select(Path.GetFileName), f =>
            f is "Microsoft.AspNetCore.dll" or "Microsoft.AspNetCore.Hosting.dll" or "OpenTelemetry.Exporter.Prometheus.AspNetCore.dll"
            || f!.StartsWith("Microsoft.AspNetCore.Server.Kestrel", StringComparison.Ordinal));

        int port = ClusterFixture.FreePort();
        var web = await cluster.StartSiloAsync("web", "--threads", "1", "--http-port", port.ToString());
        var listening = ProcessSockets.ListeningPorts(web.Pid);
        Assert.Equal(3, listening.Count);
        Assert.Contains(port, listening);
        // No dashboard unless asked for.
        Assert.Equal(404, (await GetAsync(port, "/dashboard/")).Status);
    }

    [Fact]
    public async Task Dashboard_is_under_slash_dashboard_on_the_http_port_and_the_options_fail_in_one_line()
    {
        await using var cluster = await ClusterFixture.CreateAsync(output);
        int port = ClusterFixture.FreePort();
        await cluster.StartSiloAsync("dash", "--threads", "1", "--http-port", port.ToString(), "--dashboard");

        using var redirect = await Http.GetAsync($"http://127.0.0.1:{port}/dashboard");
        Assert.Equal(HttpStatusCode.MovedPermanently, redirect.StatusCode);
        Assert.Equal("/dashboard/", redirect.Headers.Location?.OriginalString);
        var page = await GetAsync(port, "/dashboard/");
        Assert.Equal(200, page.Status);
        Assert.Contains("<title>Orleans Dashboard</title>", page.Body);
        // Its API sees the cluster (this silo, by name); the log stream is off.
        await Poll.UntilAsync(async () => (await GetAsync(port, "/dashboard/DashboardCounters")).Body.Contains("\"siloName\":\"dash\"", StringComparison.Ordinal),
            "the dashboard lists the silo");
        Assert.Equal(403, (await GetAsync(port, "/dashboard/Trace")).Status);

        var noPort = await cluster.CliAsync("silo", "--data-root", cluster.Root.Path, "--dashboard");
        Assert.Equal((1, "error: --dashboard: the dashboard is served on the HTTP port; add --http-port"), (noPort.ExitCode, noPort.Stderr.Trim()));
        var badPort = await cluster.CliAsync("silo", "--data-root", cluster.Root.Path, "--http-port", "70000");
        Assert.Equal((1, "error: --http-port: 70000 is not a TCP port (1-65535)"), (badPort.ExitCode, badPort.Stderr.Trim()));

        // A port another process holds (as Kestrel binds it: every address, IPv4 and IPv6).
        using var taken = new TcpListener(IPAddress.IPv6Any, 0);
        taken.Server.DualMode = true;
        taken.Start();
        int held = ((IPEndPoint)taken.LocalEndpoint).Port;
        var busy = await cluster.CliAsync("silo", "--name", "busy", "--data-root", cluster.Root.Path, "--http-port", held.ToString(),
            "--silo-port", ClusterFixture.FreePort().ToString(), "--gateway-port", ClusterFixture.FreePort().ToString());
        Assert.Equal((1, $"error: silo busy: --http-port {held}: address already in use"), (busy.ExitCode, busy.Stderr.Trim()));
    }

    /// <summary>Status and body of a GET; status -1 when nothing listens.</summary>
    private static async Task<(int Status, string Body)> GetAsync(int port, string path)
    {
        try
        {
            using var response = await Http.GetAsync($"http://127.0.0.1:{port}{path}");
            return ((int)response.StatusCode, await response.Content.ReadAsStringAsync());
        }
        catch (HttpRequestException e) when (e.InnerException is SocketException { SocketErrorCode: SocketError.ConnectionRefused })
        {
            return (-1, "");
        }
    }

    private static async Task<PrometheusText> ScrapeAsync(int port)
    {
        var (status, body) = await GetAsync(port, "/metrics");
        Assert.True(status == 200, $"/metrics: {status} {body}");
        return PrometheusText.Parse(body);
    }
}
