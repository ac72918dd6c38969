using System.Text.Json;
using System.Text.Json.Serialization;

namespace MergeCluster.Planning;

/// <summary>The `__metadata__` fields a merged file carries so that it can be replayed and audited.</summary>
public static class MergeMetadata
{
    public const string Recipe = "mergecluster.recipe";
    public const string Inputs = "mergecluster.inputs";
    public const string Tool = "mergecluster.tool";
    /// <summary>The output dtype when the command line chose it (`merge --dtype`), not the recipe.</summary>
    public const string OutputDType = "mergecluster.output_dtype";
    public const string ToolName = "mergecluster 1";

    /// <summary>Input hashes as a JSON object, keys in ordinal order so the header is deterministic.</summary>
    public static string FormatInputs(IReadOnlyDictionary<string, string> hashes)
    {
        var sorted = new SortedDictionary<string, string>(hashes.ToDictionary(), StringComparer.Ordinal);
        return JsonSerializer.Serialize(sorted, MetadataJson.Default.SortedDictionaryStringString);
    }

    /// <summary>The recorded hashes; anything but a JSON object of strings is an error naming <paramref name="file"/>.</summary>
    public static IReadOnlyDictionary<string, string> ParseInputs(string json, string file)
    {
        try
        {
            return JsonSerializer.Deserialize(json, MetadataJson.Default.DictionaryStringString) ?? throw new JsonException("null");
        }
        catch (JsonException e)
        {
            throw new Merge.MergeException($"{file}: metadata '{Inputs}' is not a JSON object of model names to hashes ({e.Message.Split('\n')[0]})", e);
        }
    }
}

/// <summary>Source-generated: the reflection-based serializer cost every merge about a tenth of a second of start-up (reflection emit).</summary>
[JsonSerializable(typeof(SortedDictionary<string, string>))]
[JsonSerializable(typeof(Dictionary<string, string>))]
internal sealed partial class MetadataJson : JsonSerializerContext;
