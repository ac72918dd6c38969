using System.CommandLine;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster inspect`: placeholder until implemented.</summary>
public static class InspectCommand
{
    public static Command Create()
    {
        var command = new Command("inspect", "not implemented yet");
        command.SetAction(_ => { Console.Error.WriteLine("error: inspect is not implemented yet"); return 1; });
        return command;
    }
}
