using System.CommandLine;
using System.Net;
using System.Runtime.InteropServices;
using MergeCluster.Cluster;
using MergeCluster.Cluster.Silo;
using MergeCluster.Merge;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster silo`: an Orleans silo of the cluster; SIGTERM or Ctrl-C drains it, a second signal stops it at once.</summary>
public static class SiloCommand
{
    public const string CommandName = "silo", NameVariable = "MERGECLUSTER_SILO_NAME", AdvertisedIpVariable = "POD_IP";

    public static Command Create()
    {
        var cluster = new ClusterOptions();
        var name = new Option<string?>("--name") { Description = $"silo name (default: ${NameVariable}, else host-pid)" };
        var threads = new Option<int>("--threads") { Description = "tasks run at once on this silo", DefaultValueFactory = _ => Environment.ProcessorCount };
        var roots = new Option<string[]>("--data-root")
        {
            Description = "directory the silo may open models, scratch and outputs under (repeatable)",
            HelpName = "DIR",
            Required = true,
            Arity = ArgumentArity.OneOrMore,
        };
        var siloPort = new Option<int>("--silo-port") { Description = "Orleans silo-to-silo port", DefaultValueFactory = _ => 11111 };
        var gatewayPort = new Option<int>("--gateway-port") { Description = "Orleans client gateway port", DefaultValueFactory = _ => 30000 };
        var advertised = new Option<string?>("--advertised-ip") { Description = $"the IP other silos and clients reach this silo on (default: ${AdvertisedIpVariable}, else the first non-loopback address, else 127.0.0.1)", HelpName = "IP" };

        var httpPort = new Option<int?>("--http-port")
        {
            Description = "serve /healthz (alive), /readyz (joined and taking work) and /metrics (Prometheus) on this port (default: no HTTP listener)",
            HelpName = "P",
        };
        var dashboard = new Option<bool>("--dashboard") { Description = "also serve the Orleans Dashboard under /dashboard/ on the --http-port" };

        var command = new Command(CommandName, "run an Orleans silo of the cluster: hosts job and shard grains, runs tasks, drains on SIGTERM");
        cluster.AddTo(command);
        foreach (var option in new Option[] { name, threads, roots, siloPort, gatewayPort, advertised, httpPort, dashboard }) command.Options.Add(option);
        command.SetAction(async (parse, _) =>
        {
            var client = cluster.Resolve(parse);
            string? ipText = parse.GetValue(advertised) is { Length: > 0 } a ? a : Environment.GetEnvironmentVariable(AdvertisedIpVariable);
            IPAddress? ip = null;
            if (!string.IsNullOrWhiteSpace(ipText) && !IPAddress.TryParse(ipText, out ip)) throw new MergeException($"--advertised-ip: '{ipText}' is not an IP address");
            var settings = new SiloSettings
            {
                Storage = client.Storage,
                ClusterId = client.ClusterId,
                ServiceId = client.ServiceId,
                Name = parse.GetValue(name) is { Length: > 0 } n ? n : Environment.GetEnvironmentVariable(NameVariable) is { Length: > 0 } fromEnv ? fromEnv : $"{Environment.MachineName}-{Environment.ProcessId}",
                Threads = parse.GetValue(threads),
                DataRoots = parse.GetValue(roots)!,
                SiloPort = parse.GetValue(siloPort),
                GatewayPort = parse.GetValue(gatewayPort),
                AdvertisedIp = ip,
                HttpPort = parse.GetValue(httpPort),
                Dashboard = parse.GetValue(dashboard),
            };
            // The silo drains on its own signals and exits 0; they are not an interruption of a command.
            CliRunner.LeaveSignalsToCommand();
            using var host = SiloHost.Build(settings, b => b.Services.AddSingleton<IHostLifetime, SignalLifetime>());
            var lifetime = host.Services.GetRequiredService<IHostApplicationLifetime>();
            int signals = 0;
            void OnSignal(PosixSignalContext context)
            {
                // The first signal drains through Orleans' graceful shutdown (Kubernetes scale-in); a second stops at once.
                context.Cancel = true;
                if (Interlocked.Increment(ref signals) == 1)
                {
                    lifetime.StopApplication();
                    return;
                }
                Console.Error.WriteLine("silo: second signal, stopping at once");
                Console.Error.Flush();
                Kill(Environment.ProcessId, 9);
            }
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
            try
            {
                await host.StartAsync(CancellationToken.None);
            }
            catch (Exception e) when (SiloHttp.IsPortInUse(e))
            {
                // Kestrel binds before the silo starts, so nothing of Orleans ran yet.
                throw new MergeException($"silo {settings.Name}: --http-port {settings.HttpPort}: {ErrorText.Innermost(e).ToLowerInvariant()}");
            }
            catch (Exception e) when (e is not MergeException)
            {
                throw new MergeException($"silo {settings.Name}: could not start against storage {client.Storage.Display}: {client.Storage.Scrub(ErrorText.Innermost(e))}");
            }
            await host.WaitForShutdownAsync(CancellationToken.None);
            Console.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} silo {settings.Name}: drained and left");
            return 0;
        });
        return command;
    }


    [DllImport("libc", EntryPoint = "kill")]
    private static extern int Kill(int pid, int signal);

    /// <summary>No console lifetime: the command handles the signals itself, so a second one is not held up waiting for the drain.</summary>
    private sealed class SignalLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
