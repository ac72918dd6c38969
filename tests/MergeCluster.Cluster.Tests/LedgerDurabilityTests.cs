using MergeCluster.Cluster.Ledger;
using MergeCluster.Cluster.Tests.Infrastructure;
using MergeCluster.Engine.Ledger;
using Npgsql;

namespace MergeCluster.Cluster.Tests;

/// <summary>
/// Which of the PostgreSQL ledger's commits wait until they are durable. The server is told its synchronous standby is
/// "nobody", who never connects, so a commit that waits for durability waits until the test takes that back, and one
/// that does not returns at once.
/// </summary>
public sealed class LedgerDurabilityTests
{
    private static readonly TimeSpan Hang = TimeSpan.FromSeconds(60);

    // Sessions that commit as on a production server (the test server's default is asynchronous), and never time out
    // a statement, so that only taking the standby back ends a wait.
    private static string Synchronous(string database) => database + ";Options=-c synchronous_commit=on;Command Timeout=0";

    [Fact]
    public async Task A_claim_does_not_wait_for_the_wal_flush_but_a_completion_does()
    {
        // A server of its own: the standby setting is server-wide and would stall every other test's commits.
        await using var server = await PostgresServer.StartAsync();
        string database = await server.CreateDatabaseAsync();
        await using var silo = await PostgresLedger.OpenAsync(LedgerConnection.Parse(Synchronous(database)), new PostgresLedgerOptions { Listen = false }, default);
        await using (var coordinator = await PostgresLedger.OpenAsync(LedgerConnection.Parse(database), null, default))
        {
            long job = await coordinator.SubmitJobAsync(new JobSubmission("recipe", "/recipes", "", null), default);
            Assert.NotNull(await coordinator.TryAcquireCoordinatorAsync("coord", TimeSpan.FromMinutes(5), default));
            await coordinator.AddTasksAsync(job, "coord", [new TaskSpec("t0", "test", "payload", [], 100)], default);
        }

        await using var probe = new NpgsqlConnection(Synchronous(database));
        await probe.OpenAsync();
        try
        {
            await SetStandbyAsync(server, "'nobody'");
            // The control: once a plain synchronous commit hangs, the setting is in force (a reload applies it a moment later).
            Task probed;
            int probes = 0;
            do
            {
                Assert.True(++probes <= 30, "a synchronous commit should wait for the missing standby");
                await using var create = new NpgsqlCommand($"CREATE TABLE probe{probes} (x int)", probe);
                probed = create.ExecuteNonQueryAsync();
                await Task.WhenAny(probed, Task.Delay(TimeSpan.FromSeconds(1)));
            } while (probed.IsCompleted);

            var lease = await silo.ClaimTaskAsync("s1", TimeSpan.FromMinutes(5), default).WaitAsync(Hang);
            Assert.NotNull(lease);

            var complete = silo.CompleteTaskAsync(lease, default);
            await Task.WhenAny(complete, Task.Delay(TimeSpan.FromSeconds(1)));
            Assert.False(complete.IsCompleted, "a completion must not return before its commit is durable");

            await SetStandbyAsync(server, "DEFAULT");
            Assert.True(await complete.WaitAsync(Hang));
            await probed.WaitAsync(Hang);
        }
        finally
        {
            await SetStandbyAsync(server, "DEFAULT");
        }
    }

    /// <summary>Sets the server's synchronous standbys; without any, the server releases every commit waiting for one.</summary>
    private static async Task SetStandbyAsync(PostgresServer server, string names)
    {
        await using var conn = new NpgsqlConnection(server.ConnectionString());
        await conn.OpenAsync();
        await using (var set = new NpgsqlCommand($"ALTER SYSTEM SET synchronous_standby_names = {names}", conn)) await set.ExecuteNonQueryAsync();
        await using (var reload = new NpgsqlCommand("SELECT pg_reload_conf()", conn)) await reload.ExecuteScalarAsync();
    }
}
