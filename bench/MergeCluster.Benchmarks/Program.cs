using BenchmarkDotNet.Running;
using MergeCluster.Benchmarks;

// read FILE [--threads N]: decode a whole checkpoint to float32 and compare with cat on the same file.
// kernels [BenchmarkDotNet args]: micro-benchmarks of the dtype conversion kernels.
// merge FILE... [--threads N] [--dtype D]: N-way mean of the files vs cat of the same inputs, and peak RSS.
// methods BASE FILE... [--threads N] [--only m,...]: each merge method's time, passes over the input and peak RSS.
// plan [DIR [TENSORS [NAMES]]]: planning time and memory for a 1,000,000-tensor header and 1,000 names for one file.
switch (args.FirstOrDefault())
{
    case "plan":
        return PlanScale.Run(args[1..]);
    case "methods":
        return await MethodsBenchmark.RunAsync(args[1..]);
    case "method-run":
        return await MethodsBenchmark.RunOneAsync(args[1..]);
    case "merge":
        return await MergeThroughput.RunAsync(args[1..]);
    case "read" when args.Length >= 2:
        int threads = Environment.ProcessorCount;
        int at = Array.IndexOf(args, "--threads");
        if (at >= 0 && (at + 1 >= args.Length || !int.TryParse(args[at + 1], out threads) || threads < 1))
        {
            Console.Error.WriteLine("--threads needs a positive number");
            return 2;
        }
        return ReadThroughput.Run(args[1], threads);
    case "kernels":
        BenchmarkRunner.Run<KernelBenchmarks>(args: args[1..]);
        return 0;
    default:
        Console.Error.WriteLine("usage: MergeCluster.Benchmarks read FILE [--threads N] | kernels [BenchmarkDotNet options] | merge FILE... [--threads N] [--dtype f16|bf16|f32] | methods BASE FILE... [--threads N] [--only m,...] | plan [DIR [TENSORS [NAMES]]]");
        return 2;
}
