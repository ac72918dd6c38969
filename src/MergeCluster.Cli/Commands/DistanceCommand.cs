using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using MergeCluster.Engine.Execution;
using MergeCluster.Engine.Selection;
using MergeCluster.Merge;
using MergeCluster.Merge.Architecture;
using MergeCluster.Cluster;
using MergeCluster.Planning;
using MergeCluster.Safetensors;
using Spectre.Console;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster distance`: L2 distances and cosine similarities between models, per component and block, in one read.</summary>
public static class DistanceCommand
{
    public static Command Create()
    {
        var modelsArg = new Argument<string[]>("MODEL") { Description = "Checkpoints to compare (.safetensors)", Arity = ArgumentArity.OneOrMore };
        var baseOption = new Option<string?>("--base") { Description = "Reference model: listed first, and the line plots show every model's distance to it" };
        var componentOption = new Option<string?>("--component") { Description = "Components to compare, comma-separated: unet, te0, te1, vae (te for SD1's text encoder); default all" };
        var blocks = new Option<bool>("--blocks") { Description = "Also per UNET block in supermerger naming (BASE, IN00 ..., M00, OUT00 ...)" };
        var output = new Option<DirectoryInfo?>("--output", "-o") { Description = "Directory for distances.json, a CSV per component and the PNG plots" };
        var json = new Option<bool>("--json") { Description = "Print the distances.json object on stdout" };
        var threads = new Option<int>("--threads", "-j") { Description = "Worker threads", DefaultValueFactory = _ => Environment.ProcessorCount };
        var shardMb = new Option<int>("--shard-mb")
        {
            Description = "input megabytes per shard: the sums are added per shard, then over shards in order, so the same value gives the same bits on any machine (the cluster's `submit --kind distance` too)",
            DefaultValueFactory = _ => (int)(DistancePlan.ShardBytes >> 20),
        };

        var command = new Command("distance", "L2 distance and cosine similarity between every pair of models, per component (and UNET block), in one streaming pass")
        {
            modelsArg, baseOption, componentOption, blocks, output, json, threads, shardMb,
        };
        command.SetAction(async (parse, ct) =>
        {
            var components = DistancePlan.ParseComponents(parse.GetValue(componentOption));
            var plan = DistancePlan.Create(parse.GetValue(modelsArg)!, parse.GetValue(baseOption), components, parse.GetValue(blocks),
                Math.Max(1, parse.GetValue(shardMb)) * (1L << 20));
            string? dir = parse.GetValue(output)?.FullName;
            if (dir is not null) Directory.CreateDirectory(dir);

            var progress = new MergeProgress();
            var clock = Stopwatch.StartNew();
            DistanceStatistics? stats = null;
            var job = new DistanceJob(plan);
            await ProgressDisplay.RunAsync(progress, plan.InputBytes, async () => stats = await job.RunAsync(Math.Max(1, parse.GetValue(threads)), progress, ct), ct, "distance");
            double seconds = clock.Elapsed.TotalSeconds;
            var report = DistanceReport.Create(plan, stats!);

            var written = dir is null ? [] : report.WriteFiles(dir);
            if (parse.GetValue(json))
            {
                Console.WriteLine(report.ToJson());
                return 0;
            }
            PrintSummary(report, plan, progress.InputBytes, seconds, written);
            return 0;
        });
        return command;
    }

    private static void PrintSummary(DistanceReport report, DistancePlan plan, long bytes, double seconds, IReadOnlyList<string> written)
    {
        string reference = report.Base ?? report.Models[0];
        Console.WriteLine($"distance: {report.Models.Count} models ({report.Architecture}{(report.Base is null ? "" : $", base {Terminal.Escape(report.Base)}")}), read {Units.Bytes(bytes)} in {seconds:F1} s ({Units.Bytes((long)(bytes / Math.Max(seconds, 1e-9)))}/s)");
        var console = HumanConsole.Create();
        foreach (var c in report.Components)
        {
            if (c.Keys == 0)
            {
                Console.WriteLine($"{c.Name}: no model holds it");
                continue;
            }
            var far = DistancePlots.FarAway(c);
            var table = new Table().Border(HumanConsole.Border).Title(Markup.Escape($"{c.Name} ({c.Keys} keys)"))
                .AddColumns("model", $"L2 to {Markup.Escape(Terminal.Escape(reference))}", "cosine", "nearest", "notes");
            for (int i = 0; i < report.Models.Count; i++)
            {
                int nearest = Enumerable.Range(0, report.Models.Count).Where(j => j != i && double.IsFinite(c.L2[i, j])).DefaultIfEmpty(-1).MinBy(j => j < 0 ? 0 : c.L2[i, j]);
                var notes = new List<string>();
                if (far[i]) notes.Add("far from the rest");
                if (report.Absent[c.Name].Contains(report.Models[i])) notes.Add("lacks it");
                if (report.NonFinite[c.Name].TryGetValue(report.Models[i], out long bad)) notes.Add($"{bad} NaN/Inf values");
                int oneSided = Row(c.OneSided, i).Max(), mismatched = Row(c.ShapeMismatches, i).Max();
                if (oneSided > 0) notes.Add($"up to {oneSided} keys one-sided");
                if (mismatched > 0) notes.Add($"up to {mismatched} shape mismatches");
                table.AddRow(new Text(Terminal.Escape(report.Models[i])), new Text(Format(c.L2[0, i])), new Text(Format(c.Cosine[0, i], "F6")),
                    new Text(nearest < 0 ? "-" : Terminal.Escape($"{report.Models[nearest]} ({Format(c.L2[i, nearest])})")), new Text(string.Join("; ", notes)));
            }
            console.Write(table);
        }
        var identical = report.IdenticalLines().ToList();
        Console.WriteLine(identical.Count == 0 ? "identical: none" : "identical: " + Terminal.Escape(string.Join("; ", identical)));
        foreach (var f in written) Console.WriteLine($"wrote {Terminal.Escape(f)}");
    }

    private static IEnumerable<int> Row(int[,] m, int i) => Enumerable.Range(0, m.GetLength(1)).Select(j => m[i, j]);

    private static string Format(double x, string format = "G6") => double.IsFinite(x) ? x.ToString(format, CultureInfo.InvariantCulture) : "-";
}
