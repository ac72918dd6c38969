using MergeCluster.Fuzz;
using SharpFuzz;

// MergeCluster.Fuzz TARGET: afl-fuzz's target (fuzz/run.sh). MergeCluster.Fuzz TARGET FILE...: runs files once each.
if (args.Length == 0 || !FuzzTargets.All.TryGetValue(args[0], out var target))
{
    Console.Error.WriteLine($"usage: MergeCluster.Fuzz {string.Join("|", FuzzTargets.All.Keys)} [FILE...]");
    return 2;
}
if (args.Length > 1)
{
    foreach (string file in args[1..]) target(File.ReadAllBytes(file));
    return 0;
}
// Out of process: a crash that ends the .NET process (a stack overflow) is reported as a crash and the fuzzing goes on.
Fuzzer.OutOfProcess.Run(stream =>
{
    using var copy = new MemoryStream();
    stream.CopyTo(copy);
    target(copy.ToArray());
});
return 0;
