using System.CommandLine;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster synth`: placeholder until implemented.</summary>
public static class SynthCommand
{
    public static Command Create()
    {
        var command = new Command("synth", "not implemented yet");
        command.SetAction(_ => { Console.Error.WriteLine("error: synth is not implemented yet"); return 1; });
        return command;
    }
}
