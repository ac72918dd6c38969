using System.Text.RegularExpressions;
using MergeCluster.Engine.Ledger;
using Npgsql;

namespace MergeCluster.Cluster.Ledger;

/// <summary>
/// A ledger connection string as given on the command line or in MERGECLUSTER_LEDGER: Npgsql's key=value form or a
/// postgres:// URI. It keeps the password to itself: <see cref="Display"/> and <see cref="Scrub"/> are what logs,
/// errors and <c>status</c> show.
/// </summary>
public sealed partial class LedgerConnection
{
    public const string EnvironmentVariable = "MERGECLUSTER_LEDGER";

    /// <summary>The Npgsql connection string, password included: for the data source only.</summary>
    internal string ConnectionString { get; }
    /// <summary>user@host:port/database, never the password.</summary>
    public string Display { get; }
    private readonly string? _password;

    private LedgerConnection(NpgsqlConnectionStringBuilder builder)
    {
        _password = builder.Password;
        // Defaults a cluster wants unless the string says otherwise; a short connect timeout keeps an unreachable
        // server a quick, clear error instead of a long hang.
        if (string.IsNullOrEmpty(builder.ApplicationName)) builder.ApplicationName = "mergecluster";
        if (!builder.ContainsKey("Timeout")) builder.Timeout = 5;
        builder.NoResetOnClose = true;
        // The ledger sends the same dozen statements over and over: prepared once per connection, they skip planning.
        if (builder.MaxAutoPrepare == 0) builder.MaxAutoPrepare = 32;
        ConnectionString = builder.ConnectionString;
        Display = $"{(builder.Username is { Length: > 0 } u ? u + "@" : "")}{builder.Host ?? "localhost"}:{builder.Port}/{builder.Database ?? builder.Username}";
    }

    /// <summary>Parses <paramref name="value"/>, or MERGECLUSTER_LEDGER when it is null or empty.</summary>
    public static LedgerConnection Parse(string? value)
    {
        value = string.IsNullOrWhiteSpace(value) ? Environment.GetEnvironmentVariable(EnvironmentVariable) : value;
        if (string.IsNullOrWhiteSpace(value))
            throw new LedgerException($"no ledger given: pass --ledger CONNECTION or set {EnvironmentVariable}");
        try
        {
            return new LedgerConnection(value.Contains("://") ? FromUri(value) : new NpgsqlConnectionStringBuilder(value));
        }
        catch (Exception e) when (e is ArgumentException or FormatException or UriFormatException or KeyNotFoundException)
        {
            throw new LedgerException($"invalid ledger connection string: {MaskAnyPassword(e.Message, value)}");
        }
    }

    /// <summary>postgres://user:password@host:port/database?key=value, the form Kubernetes secrets usually hold.</summary>
    private static NpgsqlConnectionStringBuilder FromUri(string value)
    {
        var uri = new Uri(value);
        if (uri.Scheme is not ("postgres" or "postgresql")) throw new FormatException($"unsupported scheme '{uri.Scheme}' (use postgres://)");
        var builder = new NpgsqlConnectionStringBuilder { Host = uri.Host };
        if (uri.Port > 0) builder.Port = uri.Port;
        var user = uri.UserInfo.Split(':', 2);
        if (user[0].Length > 0) builder.Username = Uri.UnescapeDataString(user[0]);
        if (user.Length == 2) builder.Password = Uri.UnescapeDataString(user[1]);
        var database = uri.AbsolutePath.Trim('/');
        if (database.Length > 0) builder.Database = Uri.UnescapeDataString(database);
        foreach (var pair in uri.Query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var kv = pair.Split('=', 2);
            builder[Uri.UnescapeDataString(kv[0])] = kv.Length == 2 ? Uri.UnescapeDataString(kv[1]) : "";
        }
        return builder;
    }

    /// <summary>The text with this connection's password, if it appears, replaced by ***.</summary>
    public string Scrub(string text) => string.IsNullOrEmpty(_password) ? text : text.Replace(_password, "***", StringComparison.Ordinal);

    /// <summary>Masks password values in a string that could not even be parsed.</summary>
    private static string MaskAnyPassword(string message, string connection)
    {
        foreach (Match m in PasswordPattern().Matches(connection))
        {
            var secret = m.Groups["secret"].Value;
            if (secret.Length > 0) message = message.Replace(secret, "***", StringComparison.Ordinal);
        }
        return message;
    }

    [GeneratedRegex(@"(?:(?i:password|pwd)\s*=\s*(?<secret>[^;]*))|(?::\/\/[^:/@]*:(?<secret>[^@]*)@)")]
    private static partial Regex PasswordPattern();
}
