using MergeCluster.Cluster;
using System.CommandLine;
using System.Text.Json;
using MergeCluster.Merge.Architecture;
using MergeCluster.Safetensors;
using Spectre.Console;

namespace MergeCluster.Cli.Commands;

/// <summary>`mergecluster inspect`: architecture, components, hashes, missing and unknown keys of one checkpoint.</summary>
public static class InspectCommand
{
    /// <summary>How many missing or unknown keys the human view lists before it only counts them.</summary>
    private const int ListedKeys = 10;

    public static Command Create()
    {
        var file = new Argument<string>("file") { Description = "A .safetensors checkpoint" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of tables" };
        var scan = new Option<bool>("--scan") { Description = "Also read every value and count NaN and infinities per component" };
        var command = new Command("inspect", "Show a checkpoint's architecture, components, hashes, metadata, and missing or unknown keys");
        command.Arguments.Add(file);
        command.Options.Add(json);
        command.Options.Add(scan);
        command.SetAction((parse, cancellation) =>
        {
            using var checkpoint = SafetensorsFile.Open(parse.GetValue(file)!);
            var summary = CheckpointSummary.Create(checkpoint, hashes: true, scan: parse.GetValue(scan), cancellation);
            if (parse.GetValue(json)) WriteJson(summary);
            else WriteTables(summary);
            return Task.FromResult(0);
        });
        return command;
    }

    private static void WriteJson(CheckpointSummary s)
    {
        using var stdout = Console.OpenStandardOutput();
        using (var w = new Utf8JsonWriter(stdout, new JsonWriterOptions
        {
            Indented = true,
            Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        }))
        {
            w.WriteStartObject();
            w.WriteString("file", s.Path);
            w.WriteNumber("size", s.Length);
            w.WriteString("architecture", s.Architecture.Name);
            w.WriteString("sha256", s.Sha256);
            w.WriteString("autov2", s.AutoV2);
            w.WriteString("legacy_hash", s.LegacyHash);
            w.WriteNumber("tensors", s.Tensors);
            w.WriteNumber("parameters", s.Parameters);
            w.WriteStartObject("components");
            foreach (var c in s.Components)
            {
                w.WriteStartObject(c.Component.Name());
                w.WriteNumber("keys", c.Keys.Count);
                w.WriteNumber("parameters", c.Parameters);
                w.WriteNumber("bytes", c.Bytes);
                w.WriteString("hash", c.ContentHash);
                w.WriteStartObject("dtypes");
                foreach (var (dtype, count) in c.DTypes) w.WriteNumber(dtype.Name(), count);
                w.WriteEndObject();
                w.WriteNumber("missing", c.MissingKeys);
                if (c.NonFinite is { } bad) w.WriteNumber("nonfinite", bad);
                w.WriteEndObject();
            }
            w.WriteEndObject();
            WriteStrings(w, "missing_keys", s.Detection.MissingKeys);
            WriteStrings(w, "unknown_keys", s.Detection.UnknownKeys);
            w.WriteStartObject("metadata");
            foreach (var (key, value) in s.Metadata) w.WriteString(key, value);
            w.WriteEndObject();
            if (s.NonFiniteByKey is { } byKey)
            {
                w.WriteNumber("nonfinite", s.NonFinite!.Value);
                w.WriteStartObject("nonfinite_keys");
                foreach (var (key, count) in byKey.OrderBy(kv => kv.Key, StringComparer.Ordinal)) w.WriteNumber(key, count);
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        stdout.Write("\n"u8);
    }

    private static void WriteStrings(Utf8JsonWriter w, string name, IEnumerable<string> values)
    {
        w.WriteStartArray(name);
        foreach (string v in values) w.WriteStringValue(v);
        w.WriteEndArray();
    }

    private static void WriteTables(CheckpointSummary s)
    {
        var console = HumanConsole.Create();
        string pruned = s.Detection.IsPruned ? $", pruned: {s.Detection.MissingKeys.Count:N0} required keys missing" : "";
        var facts = new List<(string, string)>
        {
            ("file", $"{Terminal.Escape(s.Path)} ({Units.Bytes(s.Length)})"),
            ("architecture", s.Architecture.IsKnown ? $"{s.Architecture.Name} - {s.Architecture.Title}{pruned}" : "unknown (no known key layout matches)"),
            ("tensors", $"{s.Tensors:N0}, {s.Parameters:N0} parameters"),
            ("autov2", s.AutoV2 ?? "-"),
            ("legacy hash", s.LegacyHash ?? "-"),
            ("sha256", s.Sha256 ?? "-"),
        };
        if (s.NonFinite is { } bad) facts.Add(("non-finite", bad == 0 ? "none" : $"{bad:N0} values in {s.NonFiniteByKey!.Count:N0} tensors"));
        foreach (var (label, value) in facts) console.Write(new Text($"{label,-13}{value}\n"));
        console.WriteLine();
        if (s.Components.Count > 0)
        {
            console.Write(ComponentTable(s));
            console.WriteLine();
        }

        if (s.Metadata.Count == 0) console.Write(new Text("metadata: none\n"));
        else
        {
            console.Write(new Text($"metadata ({s.Metadata.Count:N0}):\n"));
            var metadata = new Table().Border(HumanConsole.Border).AddColumns("key", "value");
            foreach (var (key, value) in s.Metadata)
                metadata.AddRow(new Text(Terminal.Escape(key)),
                    new Text(value.Length > 120 ? $"{Terminal.Escape(value[..117].ReplaceLineEndings(" "))}... ({value.Length:N0} chars)" : Terminal.Escape(value.ReplaceLineEndings(" "))));
            console.Write(metadata);
        }
        if (s.Architecture.IsKnown)
        {
            WriteKeyList(console, "missing keys", s.Detection.MissingKeys);
            WriteKeyList(console, "unknown keys", s.Detection.UnknownKeys);
        }
        else console.Write(new Text("missing and unknown keys: not compared, no known architecture\n"));
        if (s.NonFiniteByKey is { Count: > 0 } byKey)
            WriteKeyList(console, "tensors with non-finite values", byKey.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $"{kv.Key}: {kv.Value:N0}").ToArray());
    }

    private static Table ComponentTable(CheckpointSummary s)
    {
        var table = new Table().Border(HumanConsole.Border);
        table.AddColumns("component", "keys", "parameters", "bytes", "dtypes", "missing", "content hash");
        if (s.NonFinite is not null) table.AddColumn("non-finite");
        foreach (int i in new[] { 1, 2, 3, 5 }) table.Columns[i].RightAligned();
        foreach (var c in s.Components)
        {
            var cells = new List<string>
            {
                c.Component.Name(),
                c.Keys.Count.ToString("N0"),
                c.Parameters.ToString("N0"),
                Units.Bytes(c.Bytes),
                c.DTypes.Count == 0 ? "-" : string.Join(" ", c.DTypes.OrderByDescending(kv => kv.Value).Select(kv => $"{kv.Key.Name()}:{kv.Value}")),
                c.MissingKeys == 0 ? "-" : c.MissingKeys.ToString("N0"),
                c.ContentHash?[..12] ?? "-",
            };
            if (c.NonFinite is { } n) cells.Add(n.ToString("N0"));
            table.AddRow(cells.Select(x => new Text(x)).ToArray());
        }
        return table;
    }

    private static void WriteKeyList(IAnsiConsole console, string title, IReadOnlyList<string> keys)
    {
        console.Write(new Text(keys.Count == 0 ? $"{title}: none\n" : $"{title} ({keys.Count:N0}):\n"));
        foreach (string key in keys.Take(ListedKeys)) console.Write(new Text($"  {Terminal.Escape(key)}\n"));
        if (keys.Count > ListedKeys) console.Write(new Text($"  ... and {keys.Count - ListedKeys:N0} more (--json lists them all)\n"));
    }
}
