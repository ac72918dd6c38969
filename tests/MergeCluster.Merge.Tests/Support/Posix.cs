using System.Runtime.InteropServices;

namespace MergeCluster.Merge.Tests.Support;

/// <summary>File system calls .NET does not offer, for planting the files a hostile directory holds.</summary>
public static partial class Posix
{
    [LibraryImport("libc", EntryPoint = "link", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int LinkFile(string existing, string created);

    [LibraryImport("libc", EntryPoint = "mkfifo", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int MakeFifo(string path, int mode);

    [LibraryImport("libc", EntryPoint = "signal", SetLastError = true)]
    private static partial nint SetSignal(int signal, nint handler);

    /// <summary>
    /// Gives <paramref name="signal"/> its default action in this process if it came here ignored, so that a child
    /// started now can act on it. A shell that runs the tests in the background (`nohup ... &`, or `&` without job
    /// control) starts them with SIGINT, SIGQUIT or SIGHUP ignored; a child inherits that, and the CLI rightly keeps
    /// an ignored signal ignored, as nohup expects. A signal this process handles is left alone.
    /// </summary>
    public static void UnignoreForChildren(int signal)
    {
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("SigIgn:", StringComparison.Ordinal));
        ulong ignored = Convert.ToUInt64(line["SigIgn:".Length..].Trim(), 16);
        if ((ignored & (1UL << (signal - 1))) == 0) return;
        if (SetSignal(signal, 0) == -1) throw new IOException($"signal {signal}: errno {Marshal.GetLastPInvokeError()}");
    }

    /// <summary>A hard link: a second name for the same inode.</summary>
    public static void HardLink(string existing, string created)
    {
        if (LinkFile(existing, created) != 0) throw new IOException($"link {created}: errno {Marshal.GetLastPInvokeError()}");
    }

    /// <summary>A named pipe: opening it for reading blocks until a writer comes.</summary>
    public static void Fifo(string path)
    {
        if (MakeFifo(path, 0x1B6) != 0) throw new IOException($"mkfifo {path}: errno {Marshal.GetLastPInvokeError()}");
    }

    /// <summary>A file of <paramref name="tensorBytes"/> zero bytes of F16 data, sparse (no disk blocks): slow to read in full, cheap to have.</summary>
    public static void SparseCheckpoint(string path, long tensorBytes)
    {
        var layout = Safetensors.SafetensorsLayout.Create([new Safetensors.TensorSpec("model.diffusion_model.out.2.weight", Safetensors.DType.F16, [tensorBytes / 2])], null);
        using var stream = new FileStream(path, FileMode.CreateNew);
        stream.Write(layout.HeaderBytes);
        stream.SetLength(layout.TotalLength);
    }
}
