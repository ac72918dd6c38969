using MergeCluster.Cluster.Ledger;
using MergeCluster.Engine.Ledger;
using Xunit.Abstractions;

namespace MergeCluster.Cluster.Tests.Infrastructure;

/// <summary>
/// One cluster test's world: a fresh database on a real PostgreSQL server, a data root, silo processes and a ledger
/// client to watch the job through. Disposing kills what still runs and writes every silo's output to the test log.
/// </summary>
public sealed class ClusterFixture : IAsyncDisposable
{
    private readonly ITestOutputHelper _output;
    private readonly List<SiloProcess> _silos = [];

    public PostgresServer Server { get; }
    /// <summary>The connection string, password included, that silos and CLI commands get through MERGECLUSTER_LEDGER.</summary>
    public string Ledger { get; }
    /// <summary>A ledger client for the test itself.</summary>
    public PostgresLedger Client { get; }
    public TempDirectory Root { get; } = new("mergecluster-cluster");
    public IReadOnlyList<SiloProcess> Silos => _silos;

    private ClusterFixture(ITestOutputHelper output, PostgresServer server, string ledger, PostgresLedger client)
    {
        _output = output;
        Server = server;
        Ledger = ledger;
        Client = client;
    }

    /// <summary>On the shared server, or on <paramref name="server"/> (a test that restarts it owns one).</summary>
    public static async Task<ClusterFixture> CreateAsync(ITestOutputHelper output, PostgresServer? server = null)
    {
        server ??= await PostgresServer.Shared;
        var ledger = await server.CreateDatabaseAsync();
        var client = await PostgresLedger.OpenAsync(LedgerConnection.Parse(ledger), null, default);
        return new ClusterFixture(output, server, ledger, client);
    }

    /// <summary>Starts a silo process and waits until it has joined the cluster.</summary>
    public Task<SiloProcess> StartSiloAsync(string name, params string[] args) => StartSiloAsync(name, new Dictionary<string, string>(), args);

    /// <summary>As above, with extra environment variables for the silo process.</summary>
    public async Task<SiloProcess> StartSiloAsync(string name, IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var silo = await SiloProcess.StartAsync(Ledger, name, Root.Path, environment, args);
        _silos.Add(silo);
        await silo.WaitForOutputAsync("joined with");
        return silo;
    }

    /// <summary>Writes a recipe into the data root and returns its path.</summary>
    public string WriteRecipe(string text, string name = "recipe.txt")
    {
        var path = Root.File(name);
        File.WriteAllText(path, text);
        return path;
    }

    /// <summary>Runs a CLI command against this cluster's ledger.</summary>
    public Task<ProcessRunner.Result> CliAsync(params string[] args) => MergeClusterCli.RunAsync(Ledger, args);

    /// <summary><c>submit RECIPE</c> of the test engine without waiting; returns the job id it printed.</summary>
    public Task<long> SubmitAsync(string recipe) => SubmitAsync(recipe, "--engine", "test");

    /// <summary><c>submit RECIPE [options]</c> without waiting; returns the job id it printed.</summary>
    public async Task<long> SubmitAsync(string recipe, params string[] options)
    {
        var result = await CliAsync(["submit", recipe, .. options]);
        Assert.True(result.ExitCode == 0, result.Output);
        return long.Parse(result.Stdout.Trim());
    }

    public async Task<JobRecord> WaitForJobEndAsync(long id)
    {
        JobRecord? job = null;
        await Poll.UntilAsync(async () => (job = await Client.GetJobAsync(id, default))!.FinishedAt is not null, $"job {id} ends");
        return job!;
    }

    public async Task<TaskRecord> TaskAsync(long job, string name) => (await Client.ListTasksAsync(job, default)).Single(t => t.Name == name);

    public Task WaitForTaskAsync(long job, string name, TaskState state, string silo) =>
        Poll.UntilAsync(async () => (await Client.ListTasksAsync(job, default)).Any(t => t.Name == name && t.State == state && t.Silo == silo),
            $"task {name} of job {job} is {state} on {silo}");

    /// <summary>Every silo's output so far, for assertions over the whole cluster.</summary>
    public string AllSiloOutput => string.Join('\n', _silos.Select(s => s.Output));

    public async ValueTask DisposeAsync()
    {
        foreach (var silo in _silos)
        {
            await silo.DisposeAsync();
            _output.WriteLine($"---- silo {silo.Name} ----\n{silo.Output}");
        }
        await Client.DisposeAsync();
        Root.Dispose();
    }
}
