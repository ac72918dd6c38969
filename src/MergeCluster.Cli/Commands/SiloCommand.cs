using System.CommandLine;
using System.Runtime.InteropServices;
using MergeCluster.Cluster;
using MergeCluster.Cluster.Testing;
using MergeCluster.Engine.Runtime;
using MergeCluster.Merge;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster silo`: a long-running cluster member; SIGTERM or Ctrl-C drains it, a second signal stops it at once.</summary>
public static class SiloCommand
{
    /// <param name="engineFactory">Builds the engine the silo runs jobs with (the merge engine), confined to the silo's data roots.</param>
    public static Command Create(Func<DataRoots, IJobEngine> engineFactory)
    {
        var ledger = LedgerOption.Create();
        var name = new Option<string?>("--name") { Description = "silo name in the membership table (default: host-pid)" };
        var threads = new Option<int>("--threads") { Description = "tasks run at once", DefaultValueFactory = _ => Environment.ProcessorCount };
        var roots = new Option<string[]>("--data-root")
        {
            Description = "directory the silo may open models, scratch and outputs under (repeatable)",
            HelpName = "DIR",
            Required = true,
            Arity = ArgumentArity.OneOrMore,
        };
        var lease = new Option<double>("--lease") { Description = "task and coordinator lease in seconds; a dead silo's work moves after it", DefaultValueFactory = _ => 30 };
        var grace = new Option<double>("--drain-grace") { Description = "seconds a running task may finish after SIGTERM before it is released", DefaultValueFactory = _ => 20 };
        // TEST ENGINE switch for the cluster's process tests; not for users.
        var engine = new Option<string>("--engine") { Hidden = true, DefaultValueFactory = _ => "merge" };

        var command = new Command("silo", "run a cluster member: claims tasks from the ledger, coordinates jobs, drains on SIGTERM");
        foreach (var option in new Option[] { ledger, name, threads, roots, lease, grace, engine }) command.Options.Add(option);
        command.SetAction(async (parse, _) =>
        {
            var settings = new SiloSettings(parse.GetValue(ledger), parse.GetValue(name), parse.GetValue(threads), parse.GetValue(roots)!,
                TimeSpan.FromSeconds(parse.GetValue(lease)), TimeSpan.FromSeconds(parse.GetValue(grace)));
            Func<DataRoots, IJobEngine> factory = parse.GetValue(engine) switch
            {
                "merge" => engineFactory,
                "test" => r => new FileTestEngine(r),
                var other => throw new MergeException($"--engine: unknown engine '{other}'"),
            };
            CliRunner.LeaveSignalsToCommand();
            using var drain = new CancellationTokenSource();
            using var abort = new CancellationTokenSource();
            void OnSignal(PosixSignalContext context)
            {
                // The first signal drains (Kubernetes scale-in); a second one stops without waiting.
                context.Cancel = true;
                if (drain.IsCancellationRequested) abort.Cancel();
                else drain.Cancel();
            }
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
            await SiloHost.RunAsync(settings, factory, new Terminal.EscapingWriter(Console.Out), drain.Token, abort.Token);
            return 0;
        });
        return command;
    }
}
