using System.Data.Common;
using Azure.Data.Tables;
using Azure.Storage.Blobs;
using MergeCluster.Merge;

namespace MergeCluster.Cluster;

/// <summary>
/// The one Azure Storage connection string a cluster shares: Table storage for membership and reminders, Blob storage
/// for grain state. Its account key (or SAS) is a secret: it is never part of a message, a log line or a span;
/// <see cref="Display"/> names the account and endpoints only.
/// </summary>
public sealed class StorageConnection
{
    public const string EnvironmentVariable = "MERGECLUSTER_STORAGE";

    private static readonly string[] SecretKeys = ["AccountKey", "SharedAccessSignature"];
    private readonly string _connectionString;

    private StorageConnection(string connectionString, string display, IReadOnlyList<string> secrets)
    {
        _connectionString = connectionString;
        Display = display;
        Secrets = secrets;
    }

    /// <summary>"account NAME, blob URL, table URL": safe to print.</summary>
    public string Display { get; }

    /// <summary>The secret parts, for scrubbing text that must never carry them.</summary>
    public IReadOnlyList<string> Secrets { get; }

    /// <summary>From <paramref name="value"/>, else <see cref="EnvironmentVariable"/>; errors never repeat the string.</summary>
    public static StorageConnection Parse(string? value)
    {
        string? text = string.IsNullOrWhiteSpace(value) ? Environment.GetEnvironmentVariable(EnvironmentVariable) : value;
        if (string.IsNullOrWhiteSpace(text))
            throw new MergeException($"no storage given: pass --storage CONNECTION or set {EnvironmentVariable}");
        var parts = new DbConnectionStringBuilder();
        try
        {
            parts.ConnectionString = text;
        }
        catch (ArgumentException)
        {
            throw new MergeException("invalid storage connection string: expected 'Key=value;...' pairs (e.g. DefaultEndpointsProtocol, AccountName, AccountKey, BlobEndpoint, TableEndpoint)");
        }
        var secrets = SecretKeys.Where(parts.ContainsKey).Select(k => (string)parts[k]).Where(s => s.Length > 0).ToList();
        string Get(string key) => parts.TryGetValue(key, out var v) ? (string)v : "";
        bool development = Get("UseDevelopmentStorage").Equals("true", StringComparison.OrdinalIgnoreCase);
        string account = development ? "devstoreaccount1" : Get("AccountName");
        BlobServiceClient blobs;
        TableServiceClient tables;
        try
        {
            blobs = new BlobServiceClient(text);
            tables = new TableServiceClient(text);
        }
        catch (Exception e) when (e is FormatException or ArgumentException or InvalidOperationException)
        {
            throw new MergeException($"invalid storage connection string for account '{account}': {Scrub(e.Message.ReplaceLineEndings(" "), secrets)}");
        }
        foreach (var secret in secrets) Known[secret] = 0;
        var display = $"account {(account.Length > 0 ? account : tables.AccountName)}, blob {blobs.Uri.GetLeftPart(UriPartial.Path).TrimEnd('/')}, table {tables.Uri.GetLeftPart(UriPartial.Path).TrimEnd('/')}";
        return new StorageConnection(text, display, secrets);
    }

    public TableServiceClient Tables() => new(_connectionString);

    public BlobServiceClient Blobs() => new(_connectionString);

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, byte> Known = new();

    /// <summary>Replaces the secret of every connection string parsed in this process: for error lines from anywhere.</summary>
    public static string ScrubAll(string text) => Scrub(text, Known.Keys);

    /// <summary>Replaces every secret in <paramref name="text"/>.</summary>
    public string Scrub(string text) => Scrub(text, Secrets);

    private static string Scrub(string text, IEnumerable<string> secrets)
    {
        foreach (var secret in secrets) text = text.Replace(secret, "***", StringComparison.Ordinal);
        return text;
    }

    public override string ToString() => Display;
}
