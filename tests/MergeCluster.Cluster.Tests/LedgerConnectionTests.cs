using MergeCluster.Cluster.Ledger;
using MergeCluster.Cluster.Tests.Infrastructure;
using MergeCluster.Engine.Ledger;

namespace MergeCluster.Cluster.Tests;

/// <summary>Connection strings and URIs parse, and the password stays out of every message a user sees.</summary>
public sealed class LedgerConnectionTests
{
    [Fact]
    public void A_uri_parses_and_displays_without_its_password()
    {
        var connection = LedgerConnection.Parse("postgres://merger:p%40ss-w0rd@db.example:6543/cluster?Timeout=9");
        Assert.Equal("merger@db.example:6543/cluster", connection.Display);
        Assert.Equal("failed for *** here", connection.Scrub("failed for p@ss-w0rd here"));
    }

    [Fact]
    public void A_key_value_string_parses_and_displays_without_its_password()
    {
        var connection = LedgerConnection.Parse("Host=10.0.0.5;Port=5433;Username=u;Password=hunter2-x;Database=ledger");
        Assert.Equal("u@10.0.0.5:5433/ledger", connection.Display);
        Assert.DoesNotContain("hunter2", connection.Display);
    }

    [Fact]
    public void An_invalid_string_is_a_one_line_error_without_the_password()
    {
        var e = Assert.Throws<LedgerException>(() => LedgerConnection.Parse("Host=h;Port=notaport;Password=hunter2-x"));
        Assert.StartsWith("invalid ledger connection string", e.Message);
        Assert.DoesNotContain("hunter2", e.Message);
        Assert.DoesNotContain('\n', e.Message);

        var uri = Assert.Throws<LedgerException>(() => LedgerConnection.Parse("mysql://u:hunter2-x@h/db"));
        Assert.DoesNotContain("hunter2", uri.Message);
    }

    [Fact]
    public void A_missing_connection_names_the_environment_variable()
    {
        if (Environment.GetEnvironmentVariable(LedgerConnection.EnvironmentVariable) is not null) return;
        var e = Assert.Throws<LedgerException>(() => LedgerConnection.Parse(null));
        Assert.Contains("MERGECLUSTER_LEDGER", e.Message);
    }

    [Fact]
    public async Task A_wrong_password_fails_at_once_with_one_line_that_does_not_hold_it()
    {
        var server = await PostgresServer.Shared;
        var wrong = server.ConnectionString().Replace(PostgresServer.Password, "Wr0ng-pass-word");
        var e = await Assert.ThrowsAsync<LedgerException>(() => PostgresLedger.OpenAsync(LedgerConnection.Parse(wrong), null, default));
        Assert.Contains("password authentication failed", e.Message);
        Assert.Contains($"postgres@127.0.0.1:{server.Port}/postgres", e.Message);
        Assert.DoesNotContain("Wr0ng-pass-word", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
