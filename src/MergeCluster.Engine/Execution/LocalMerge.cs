using System.Diagnostics;
using MergeCluster.Engine.Telemetry;
using MergeCluster.Merge.Recipes;
using MergeCluster.Planning;
using MergeCluster.Safetensors;

namespace MergeCluster.Engine.Execution;

/// <summary>Settings of a merge on this machine.</summary>
public sealed record LocalMergeOptions
{
    public int Threads { get; init; } = Environment.ProcessorCount;
    /// <summary>Upper bound of input bytes per shard; small merges use smaller shards so every thread has work.</summary>
    public long ShardBytes { get; init; } = 256L << 20;
    public string? OutputPath { get; init; }
    /// <summary>Output dtype overriding the recipe's.</summary>
    public DType? DType { get; init; }
    public bool HashInputs { get; init; } = true;
    /// <summary>When the inputs the hash cache lacks are hashed.</summary>
    public InputHashing Hashing { get; init; } = InputHashing.First;
    public TaskShape Shape { get; init; } = TaskShape.Fused;
    public NonFinitePolicy NonFinite { get; init; } = NonFinitePolicy.Warn;
    /// <summary>Told of each output tensor with NaN or infinite values, after the output is written (policy warn).</summary>
    public Action<NonFiniteTensor>? OnNonFinite { get; init; }
    /// <summary>
    /// The caller's plan of this recipe with this output, when it has made one (to check it, or print it): the merge
    /// uses it instead of reading every header again, and for a plan of a million tensors holds one plan, not two.
    /// </summary>
    public MergePlan? Plan { get; init; }
}

/// <summary>
/// The embedded default: the job's tasks run on this process's threads, in dependency order, straight through the
/// executor. It is the same <see cref="MergeJob"/> a cluster runs, so the output is the same file bit for bit; hosting
/// an in-process silo for it would cost about a second per merge (measured: 1.0 s to start, 0.1 s for the first call).
/// </summary>
public static class LocalMerge
{
    public static async Task<string> RunAsync(Recipe recipe, LocalMergeOptions options, MergeProgress? progress, CancellationToken ct)
    {
        long inputBytes = (options.Plan ?? Planner.Create(recipe, new PlanOptions { OutputPath = options.OutputPath, OutputDType = options.DType })).InputBytes;
        var jobOptions = new MergeJobOptions
        {
            Shape = options.Shape == TaskShape.Auto ? TaskShape.Fused : options.Shape,
            ShardBytes = ShardBytesFor(inputBytes, options.Threads, options.ShardBytes),
            Output = options.OutputPath,
            HashInputs = options.HashInputs,
            Hashing = options.Hashing,
            DType = options.DType?.Name(),
            NonFinite = options.NonFinite,
        };
        int threads = Math.Max(1, options.Threads);
        using var root = MergeTelemetry.StartJob(recipe.Source, out _);
        // Planning reads every header and hashes the inputs (minutes for 50 checkpoints): off the caller's thread, which
        // shows progress and must see a Ctrl-C.
        using var job = await Task.Run(() => MergeJob.Create(recipe, jobOptions, new JobEnvironment(null, threads), [], ct, progress: progress, known: options.Plan), ct);
        IReadOnlyList<NonFiniteTensor> nonFinite;
        try
        {
            using (var run = job.OpenRun(progress))
            {
                await TaskGraphRun.RunAsync(job.Tasks, threads, task =>
                {
                    using var span = MergeTelemetry.StartTask(task, attempt: 1, root?.Context ?? default);
                    run.Run(task, attempt: 1, ct);
                }, job.Release, ct);
                nonFinite = run.NonFinite();
            }
            job.Assemble();
        }
        catch (Exception e)
        {
            root?.SetStatus(ActivityStatusCode.Error, e.Message);
            MergeJob.Cleanup(job.Files);
            throw;
        }
        foreach (var t in nonFinite) options.OnNonFinite?.Invoke(t);
        return job.Plan.OutputPath;
    }

    /// <summary>Shards never change the output's bits; they only need to be many enough to keep every thread busy.</summary>
    public static long ShardBytesFor(long inputBytes, int threads, long maxShardBytes) =>
        Math.Clamp(inputBytes / (Math.Max(1, threads) * 8L), 1L << 20, Math.Max(1L << 20, maxShardBytes));
}

/// <summary>
/// Runs a task graph on dedicated threads: a task starts once its dependencies are done, the lowest-numbered ready
/// task first (so a shard's tree finishes, and its partial sums are deleted, before the next shard's leaves pile up);
/// the first failure stops the rest.
/// </summary>
internal static class TaskGraphRun
{
    public static async Task RunAsync(IReadOnlyList<MergeTask> tasks, int threads, Action<MergeTask> run, Action<MergeTask> done, CancellationToken ct)
    {
        var remaining = new int[tasks.Count];
        var dependents = new List<int>?[tasks.Count];
        var ready = new PriorityQueue<int, int>();
        foreach (var task in tasks)
        {
            remaining[task.Index] = task.DependsOn.Length;
            foreach (int d in task.DependsOn) (dependents[d] ??= []).Add(task.Index);
            if (task.DependsOn.IsEmpty) ready.Enqueue(task.Index, task.Index);
        }
        int open = tasks.Count;
        Exception? failure = null;
        var gate = new object();

        void Work()
        {
            while (true)
            {
                int next;
                lock (gate)
                {
                    while (ready.Count == 0 && open > 0 && failure is null && !ct.IsCancellationRequested) Monitor.Wait(gate);
                    if (ready.Count == 0 || failure is not null || ct.IsCancellationRequested) return;
                    next = ready.Dequeue();
                }
                try
                {
                    run(tasks[next]);
                    done(tasks[next]);
                }
                catch (Exception e)
                {
                    lock (gate)
                    {
                        failure ??= e;
                        Monitor.PulseAll(gate);
                    }
                    return;
                }
                lock (gate)
                {
                    open--;
                    foreach (int d in dependents[next] ?? [])
                        if (--remaining[d] == 0) ready.Enqueue(d, d);
                    Monitor.PulseAll(gate);
                }
            }
        }

        using (ct.Register(() => { lock (gate) Monitor.PulseAll(gate); }))
        {
            var workers = Enumerable.Range(0, Math.Min(threads, Math.Max(1, tasks.Count)))
                .Select(_ => Task.Factory.StartNew(Work, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default));
            await Task.WhenAll(workers);
        }
        if (failure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        ct.ThrowIfCancellationRequested();
        if (open != 0) throw new InvalidOperationException($"{open} tasks never became ready (a dependency cycle?)");
    }
}
