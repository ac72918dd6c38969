using System.Diagnostics;
using System.Security.Cryptography;
using MergeCluster.Planning;
using MergeCluster.Safetensors;
using Microsoft.Win32.SafeHandles;

namespace MergeCluster.Engine.Execution;

/// <summary>
/// AutoV2 hashes of the inputs the hash cache lacks, taken from the merge's own reads, so a merge of uncached
/// checkpoints reads each of them once instead of twice (hashing first was a second pass over up to 350 GB).
/// </summary>
/// <remarks>
/// sha256 needs a file's bytes in order. Each file has a cursor: a window the merge has just read that starts at the
/// cursor is hashed in place, from the mapping, before the merge unmaps it; a window ahead of the cursor is noted, and
/// read again from the page cache (positional reads, no mapping) once the cursor reaches it, as are the bytes the
/// merge never reads (the header, tensors of components it does not merge). Whatever is left when the merge is done
/// is read by <see cref="Finish"/>, so an input read out of its file's order is still hashed, only with more reads.
/// Every byte is hashed exactly once, in file order, because the cursor only moves over the bytes just hashed.
/// </remarks>
internal sealed class HashFollower : IDisposable
{
    private readonly FileHash?[] _byInput;
    private readonly FileHash[] _files;
    private readonly Dictionary<string, string> _known;
    private readonly MergeProgress? _progress;
    private readonly CancellationToken _ct;

    /// <summary>Follows the merge of <paramref name="plan"/>'s inputs to hash <paramref name="pending"/>; <paramref name="known"/> are the other inputs' hashes.</summary>
    public HashFollower(MergePlan plan, Dictionary<string, string> known, List<InputHashes.UnhashedFile> pending, MergeProgress? progress, CancellationToken ct)
    {
        IReadOnlyList<MergeInput> inputs = plan.Inputs;
        _known = known;
        _progress = progress;
        _ct = ct;
        _byInput = new FileHash?[inputs.Count];
        _files = new FileHash[pending.Count];
        try
        {
            for (int f = 0; f < pending.Count; f++)
            {
                var file = new FileHash(pending[f], TensorsRead(inputs, pending[f].Input.Identity, plan));
                _files[f] = file;
                foreach (var input in inputs)
                    if (input.Length > 0 && input.Identity == file.Input.Identity) _byInput[input.Index] = file;
            }
        }
        catch
        {
            Dispose();
            throw;
        }
        progress?.StartHashing(pending.Sum(f => f.Input.Length));
    }

    /// <summary>
    /// Hashes of the same length as the real ones, for planning the output's header before they are known: AutoV2 is
    /// always ten hex digits, so the header with the real hashes has the same length and the layout does not move.
    /// </summary>
    public IReadOnlyDictionary<string, string> Placeholders
    {
        get
        {
            var all = new Dictionary<string, string>(_known, StringComparer.Ordinal);
            foreach (var file in _files)
                foreach (string name in file.Names) all[name] = Placeholder;
            return all;
        }
    }

    /// <summary>What stands for a hash not yet known; never written to a committed file.</summary>
    public static readonly string Placeholder = new('0', ModelHashes.AutoV2Length);

    /// <summary>
    /// The merge has read the bytes at <paramref name="position"/> of input <paramref name="input"/> (still mapped:
    /// <paramref name="bytes"/>). Called from any merge thread; never blocks on another thread's hashing.
    /// </summary>
    public void Read(int input, long position, ReadOnlySpan<byte> bytes)
    {
        if (_byInput[input] is { } file) file.Read(position, bytes, this);
    }

    /// <summary>
    /// Once the merge is done: hashes what the merge did not (on up to <paramref name="threads"/> threads, a file
    /// each) and returns all inputs' hashes by model name; <see cref="Dispose"/> caches them.
    /// </summary>
    public IReadOnlyDictionary<string, string> Finish(int threads)
    {
        Parallel.ForEach(_files, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads), CancellationToken = _ct }, file => file.Finish(this));
        var all = new Dictionary<string, string>(_known, StringComparer.Ordinal);
        foreach (var file in _files)
            foreach (string name in file.Names) all[name] = file.Hash!;
        return all;
    }

    /// <summary>Caches the hashes of the files hashed to the end, done or not (a failed merge's next run need not hash them again), and closes the files.</summary>
    public void Dispose()
    {
        var done = new List<KeyValuePair<string, string>>();
        foreach (var file in _files)
        {
            if (file is null) continue;
            if (file.Hash is { } hash) done.Add(new(file.CacheKey, hash));
            file.Dispose();
        }
        InputHashes.Remember(done);
    }

    private void Hashed(long bytes) => _progress?.Hashed(bytes);

    /// <summary>The data offsets of the tensors the plan reads from the file <paramref name="identity"/>, under any model name.</summary>
    private static HashSet<long> TensorsRead(IReadOnlyList<MergeInput> inputs, FileIdentity identity, MergePlan plan)
    {
        var read = new HashSet<long>();
        foreach (var tensor in plan.Tensors)
            foreach (var term in tensor.Terms)
                if (inputs[term.Input].Identity == identity) read.Add(term.Tensor.Begin);
        return read;
    }

    /// <summary>One input file's hash: its cursor, the ranges ahead of it ready to be read, and who is hashing it now.</summary>
    private sealed class FileHash : IDisposable
    {
        private const int ChunkBytes = 1 << 20;

        private readonly IncrementalHash _sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        private readonly SafeFileHandle _handle;
        private readonly object _gate = new();
        // Ranges at or past the cursor that can be read from the file: start -> end.
        private readonly Dictionary<long, long> _ready = new();
        private long _cursor;
        private bool _busy;
        private byte[]? _buffer;
        private string? _failure;

        public FileHash(InputHashes.UnhashedFile file, HashSet<long> tensorsRead)
        {
            Input = file.Input;
            CacheKey = file.CacheKey;
            Names = file.Names;
            _handle = InputSet.Open(Input);
            // The merge never reads the header, the tensors the recipe leaves out, or gaps between tensors and bytes past
            // the last one (if a writer left any): those are ready from the start.
            var read = new List<(long Start, long End)>();
            foreach (var tensor in Input.Header.Tensors)
                if (tensor.ByteLength > 0 && tensorsRead.Contains(tensor.Begin)) read.Add((Input.Header.DataStart + tensor.Begin, Input.Header.DataStart + tensor.End));
            read.Sort();
            long at = 0;
            foreach (var (start, end) in read)
            {
                if (start > at) _ready[at] = start;
                at = Math.Max(at, end);
            }
            if (Input.Length > at) _ready[at] = Input.Length;
        }

        public MergeInput Input { get; }
        public string CacheKey { get; }
        public IReadOnlyList<string> Names { get; }
        /// <summary>The 10-digit AutoV2, once every byte is hashed.</summary>
        public string? Hash { get; private set; }

        public void Read(long position, ReadOnlySpan<byte> bytes, HashFollower owner)
        {
            long end = position + bytes.Length, from;
            bool inPlace;
            lock (_gate)
            {
                if (_failure is not null || end <= _cursor) return;
                // A window ahead of the cursor is read again when the cursor gets there; one the cursor is inside of
                // (read twice by the merge, with other bounds) is left to the ranges after it, or to Finish.
                if (position > _cursor) _ready.TryAdd(position, end);
                inPlace = position == _cursor;
                // Another thread hashes this file now and takes what was just added; or nothing starts at the cursor yet.
                if (_busy || !(inPlace || _ready.ContainsKey(_cursor))) return;
                _busy = true;
                from = _cursor;
            }
            try
            {
                if (inPlace)
                {
                    _sha.AppendData(bytes);
                    owner.Hashed(bytes.Length);
                    from = end;
                }
                Advance(from, owner);
            }
            catch (Exception e)
            {
                // The merge goes on; Finish reports the file as unhashable, and a cancel is the merge's to observe.
                Fail(e.Message);
            }
        }

        /// <summary>Moves the cursor to <paramref name="hashedTo"/>, then hashes the ready ranges that follow it, until none starts at the cursor.</summary>
        private void Advance(long hashedTo, HashFollower owner)
        {
            while (true)
            {
                long start, end;
                lock (_gate)
                {
                    _cursor = hashedTo;
                    if (_cursor == Input.Length) Complete();
                    if (!_ready.Remove(_cursor, out end))
                    {
                        _busy = false;
                        Monitor.PulseAll(_gate);
                        return;
                    }
                    start = _cursor;
                }
                ReadFile(start, end, owner);
                hashedTo = end;
            }
        }

        /// <summary>Hashes [start, end) of the file with positional reads (from the page cache, where the merge just read it).</summary>
        private void ReadFile(long start, long end, HashFollower owner)
        {
            Debug.Assert(start <= end && end <= Input.Length);
            var buffer = _buffer ??= GC.AllocateUninitializedArray<byte>(ChunkBytes);
            for (long at = start; at < end;)
            {
                owner._ct.ThrowIfCancellationRequested();
                int n = RandomAccess.Read(_handle, buffer.AsSpan(0, (int)Math.Min(ChunkBytes, end - at)), at);
                if (n <= 0)
                    throw new SafetensorsException(SafetensorsError.Io, Input.Path, null, $"the file shrank while it was being hashed (planned at {Input.Length} bytes, ended at {at})");
                _sha.AppendData(buffer, 0, n);
                owner.Hashed(n);
                at += n;
            }
        }

        private void Complete()
        {
            Debug.Assert(Monitor.IsEntered(_gate) && Hash is null);
            Hash = ModelHashes.AutoV2(_sha.GetHashAndReset());
        }

        public void Finish(HashFollower owner)
        {
            long from;
            lock (_gate)
            {
                while (_busy) Monitor.Wait(_gate);
                if (_failure is not null) throw new SafetensorsException(SafetensorsError.Io, Input.Path, null, $"cannot hash it: {_failure}");
                if (Hash is not null) return;
                _busy = true;
                _ready.Clear();
                from = _cursor;
            }
            ReadFile(from, Input.Length, owner);
            lock (_gate)
            {
                _cursor = Input.Length;
                Complete();
                _busy = false;
            }
        }

        private void Fail(string message)
        {
            lock (_gate)
            {
                _failure ??= message;
                _busy = false;
                Monitor.PulseAll(_gate);
            }
        }

        public void Dispose()
        {
            _handle.Dispose();
            _sha.Dispose();
        }
    }
}
