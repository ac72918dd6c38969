using System.CommandLine;
using MergeCluster.Cli;
using MergeCluster.Cli.Commands;

var root = new RootCommand("MergeCluster: exact N-way merges of diffusion-model checkpoints, on one machine or a cluster.");
foreach (var command in new[]
{
    InspectCommand.Create(),
    SynthCommand.Create(),
    MergeCommand.Create(),
    DistanceCommand.Create(),
    SweepCommand.Create(),
    RecipeCommand.Create(),
    SiloCommand.Create(),
    SubmitCommand.Create(),
    StatusCommand.Create(),
    CancelCommand.Create(),
})
{
    root.Subcommands.Add(command);
}
root.Subcommands.Add(DemoCommand.Create(root));

return await CliRunner.InvokeAsync(root, args);
