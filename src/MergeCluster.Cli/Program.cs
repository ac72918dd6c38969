using System.CommandLine;
using MergeCluster.Cli;
using MergeCluster.Cli.Commands;
using MergeCluster.Merge;

var root = new RootCommand("MergeCluster: exact N-way merges of diffusion-model checkpoints, on one machine or a cluster.");
foreach (var command in new[]
{
    InspectCommand.Create(),
    SynthCommand.Create(),
    // The lead plugs the merge engine in here: roots => new MergeJobEngine(roots).
    SiloCommand.Create(_ => throw new MergeException("the merge engine is not wired into the silo yet")),
    SubmitCommand.Create(),
    StatusCommand.Create(),
    CancelCommand.Create(),
})
{
    root.Subcommands.Add(command);
}

return await CliRunner.InvokeAsync(root, args);
