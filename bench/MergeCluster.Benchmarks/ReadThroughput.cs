using System.Diagnostics;
using MergeCluster.Safetensors;

namespace MergeCluster.Benchmarks;

/// <summary>
/// Decodes every tensor of a file to float32, windows spread over threads, and compares the throughput in file bytes
/// with <c>cat FILE &gt; /dev/null</c> on the same file with a warm page cache. Both run twice; the best run counts.
/// </summary>
public static class ReadThroughput
{
    /// <summary>Elements per window: the float32 destination (1 MiB) stays in a core's L2 cache.</summary>
    private const int WindowElements = 1 << 18;

    public static int Run(string path, int threads)
    {
        if (!File.Exists(path))
        {
            Console.Error.WriteLine($"{path}: file not found");
            return 1;
        }
        long length = new FileInfo(path).Length;
        Cat(path); // warms the page cache
        double cat = Math.Min(Cat(path), Cat(path));
        double read = double.MaxValue;
        double checksum = 0;
        for (int run = 0; run < 2; run++)
        {
            var (seconds, sum) = DecodeAll(path, threads);
            read = Math.Min(read, seconds);
            checksum = sum;
        }
        double catRate = length / cat / 1e9, readRate = length / read / 1e9;
        Console.WriteLine($"file     {path} ({length / 1e9:F2} GB, {threads} threads, checksum {checksum:G6})");
        Console.WriteLine($"{"",-24} {"seconds",8} {"GB/s",8}");
        Console.WriteLine($"{"cat FILE > /dev/null",-24} {cat,8:F3} {catRate,8:F2}");
        Console.WriteLine($"{"decode to float32",-24} {read,8:F3} {readRate,8:F2}");
        Console.WriteLine($"ratio    {readRate / catRate:P0} of cat (target: at least 50%)");
        return 0;
    }

    private static double Cat(string path)
    {
        var start = new ProcessStartInfo("/bin/sh", ["-c", "cat \"$1\" > /dev/null", "sh", path]);
        var clock = Stopwatch.StartNew();
        using var process = Process.Start(start)!;
        process.WaitForExit();
        if (process.ExitCode != 0) throw new InvalidOperationException($"cat exited with {process.ExitCode}");
        return clock.Elapsed.TotalSeconds;
    }

    /// <summary>Opens the file, decodes every window on <paramref name="threads"/> threads, and returns the seconds taken and a checksum.</summary>
    private static (double Seconds, double Checksum) DecodeAll(string path, int threads)
    {
        var clock = Stopwatch.StartNew();
        using var file = SafetensorsFile.Open(path);
        var windows = new List<(TensorInfo Tensor, long Offset, int Bytes)>();
        foreach (var t in file.Tensors)
        {
            long step = (long)WindowElements * t.DType.Size();
            for (long offset = 0; offset < t.ByteLength; offset += step)
                windows.Add((t, offset, (int)Math.Min(step, t.ByteLength - offset)));
        }
        int next = -1;
        var sums = new double[threads];
        var workers = Enumerable.Range(0, threads).Select(w => new Thread(() =>
        {
            var buffer = new float[WindowElements];
            double sum = 0;
            for (int i = Interlocked.Increment(ref next); i < windows.Count; i = Interlocked.Increment(ref next))
            {
                var (t, offset, bytes) = windows[i];
                var source = file.Bytes(t, offset, bytes);
                if (!t.DType.IsFloat())
                {
                    sum += source[^1]; // integer buffers (position ids) are not floats; touching them is enough
                    continue;
                }
                var dest = buffer.AsSpan(0, bytes / t.DType.Size());
                DTypeConvert.ToFloat32(t.DType, source, dest);
                sum += dest[^1];
            }
            sums[w] = sum;
        })).ToList();
        workers.ForEach(t => t.Start());
        workers.ForEach(t => t.Join());
        return (clock.Elapsed.TotalSeconds, sums.Sum());
    }
}
