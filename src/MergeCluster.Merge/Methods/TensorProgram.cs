using System.Collections.Immutable;
using System.Runtime.InteropServices;
using MergeCluster.Merge.Numerics;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Methods;

public enum ProgramOp
{
    /// <summary>A source tensor's values, decoded exactly to float64.</summary>
    Leaf,
    /// <summary>Σ cᵢ·inputᵢ / divisor, inputs in order from +0, each product and sum rounded (no FMA).</summary>
    Linear,
    /// <summary>A non-linear method over its inputs.</summary>
    Method,
}

/// <summary>One step of a tensor program; its inputs are earlier steps.</summary>
public sealed record ProgramNode(ProgramOp Op, int Leaf, ImmutableArray<int> Inputs, ImmutableArray<double> Coefficients, double Divisor,
    MergeMethodDefinition? Method, MethodArguments? Arguments)
{
    public static ProgramNode ForLeaf(int leaf) => new(ProgramOp.Leaf, leaf, [], [], 1.0, null, null);
}

/// <summary>
/// How one output tensor is computed when its recipe tree is not linear: leaves (source tensors), linear combinations
/// and methods, in evaluation order, the root last. Built by the planner from the recipe tree per key.
/// </summary>
public sealed class TensorProgram(ImmutableArray<ProgramNode> nodes)
{
    public ImmutableArray<ProgramNode> Nodes { get; } = nodes;
    public int Root => Nodes.Length - 1;

    /// <summary>The program in one line, for messages: ties_sum(subtract(#1, #0), subtract(#2, #0)).</summary>
    public override string ToString() => Describe(Root);

    private string Describe(int node) => Nodes[node] switch
    {
        { Op: ProgramOp.Leaf } n => $"#{n.Leaf}",
        { Op: ProgramOp.Linear } n => "linear(" + string.Join(", ", n.Inputs.Select((input, i) => $"{n.Coefficients[i]}·{Describe(input)}")) + (n.Divisor == 1 ? ")" : $")/{n.Divisor}"),
        var n => $"{n.Method!.Name}({string.Join(", ", n.Inputs.Select(Describe))})",
    };
}

/// <summary>Where a program's leaves come from: windows of the source tensors, chunk by chunk.</summary>
public interface ITensorSource
{
    /// <summary>Makes elements [start, start + count) of every leaf readable until <see cref="Release"/>.</summary>
    void Map(long start, int count);
    /// <summary>Decodes leaf values from element <paramref name="offset"/> of the mapped chunk into float64.</summary>
    void Decode(int leaf, int offset, Span<double> destination);
    void Release(long start, int count);
}

/// <summary>Where a program's root values go: block by block into a chunk, then the chunk is written.</summary>
public interface ITensorSink
{
    void Write(int offset, ReadOnlySpan<double> values);
    void Flush(long start, int count);
}

/// <summary>
/// Runs tensor programs: every statistics pass of every method in evaluation order, then the output pass, each a
/// stream over the tensor's chunks in element order. Memory is a few blocks per program node, whatever the tensor's
/// size. One runner per thread.
/// </summary>
public sealed class ProgramRunner
{
    /// <summary>Elements per block when no method needs whole rows: 32 KiB of float64 per node.</summary>
    public const int BlockElements = 1 << 12;

    private double[][] _buffers = [];
    private int[] _stamp = [];
    private int _generation;

    /// <summary>Passes over the input the last <see cref="Run"/> made (statistics passes plus the output pass).</summary>
    public int LastPasses { get; private set; }

    /// <summary>Runs <paramref name="program"/> for one tensor; chunks hold a whole number of blocks, at most about <paramref name="chunkElements"/>.</summary>
    public void Run(TensorProgram program, TensorContext tensor, int chunkElements, ITensorSource source, ITensorSink sink, CancellationToken ct)
    {
        var nodes = program.Nodes;
        var methods = new TensorMethod?[nodes.Length];
        var inputs = new double[nodes.Length][][];
        int row = 0;
        for (int k = 0; k < nodes.Length; k++)
        {
            if (nodes[k].Op != ProgramOp.Method) continue;
            methods[k] = nodes[k].Method!.Create!(nodes[k].Arguments!, tensor with { Inputs = nodes[k].Inputs.Length });
            row = Math.Max(row, methods[k]!.RowLength);
        }
        int block = row <= 0 ? BlockElements : row >= BlockElements ? row : BlockElements / row * row;
        int chunk = Math.Max(block, chunkElements / block * block);
        Prepare(nodes.Length, block);
        for (int k = 0; k < nodes.Length; k++) inputs[k] = nodes[k].Inputs.Select(i => _buffers[i]).ToArray();

        int passes = 0;
        for (int k = 0; k < nodes.Length; k++)
        {
            var method = methods[k];
            if (method is null) continue;
            for (int p = 0; p < method.Passes; p++)
            {
                method.BeginPass(p);
                Pass(program, methods, inputs, tensor.ElementCount, chunk, block, source, ct, (start, m) =>
                {
                    foreach (int input in nodes[k].Inputs) Evaluate(program, methods, inputs, input, start, m, source);
                    method.Observe(p, inputs[k], start.Global, m);
                });
                method.EndPass(p);
                passes++;
            }
        }
        Pass(program, methods, inputs, tensor.ElementCount, chunk, block, source, ct, (start, m) =>
        {
            Evaluate(program, methods, inputs, program.Root, start, m, source);
            sink.Write(start.InChunk, _buffers[program.Root].AsSpan(0, m));
        }, sink);
        LastPasses = passes + 1;
    }

    private readonly record struct Position(long Global, int InChunk);

    private void Pass(TensorProgram program, TensorMethod?[] methods, double[][][] inputs, long elements, int chunk, int block,
        ITensorSource source, CancellationToken ct, Action<Position, int> step, ITensorSink? sink = null)
    {
        for (long start = 0; start < elements; start += chunk)
        {
            ct.ThrowIfCancellationRequested();
            int n = (int)Math.Min(chunk, elements - start);
            source.Map(start, n);
            for (int b = 0; b < n; b += block)
            {
                _generation++;
                step(new Position(start + b, b), Math.Min(block, n - b));
            }
            source.Release(start, n);
            sink?.Flush(start, n);
        }
    }

    private void Evaluate(TensorProgram program, TensorMethod?[] methods, double[][][] inputs, int k, Position at, int m, ITensorSource source)
    {
        if (_stamp[k] == _generation) return;
        var node = program.Nodes[k];
        var output = _buffers[k];
        switch (node.Op)
        {
            case ProgramOp.Leaf:
                source.Decode(node.Leaf, at.InChunk, output.AsSpan(0, m));
                break;
            case ProgramOp.Linear:
                {
                    var acc = output.AsSpan(0, m);
                    acc.Clear();
                    for (int i = 0; i < node.Inputs.Length; i++)
                    {
                        Evaluate(program, methods, inputs, node.Inputs[i], at, m, source);
                        MergeKernels.Accumulate(DType.F64, MemoryMarshal.AsBytes(_buffers[node.Inputs[i]].AsSpan(0, m)), node.Coefficients[i], acc);
                    }
                    if (node.Divisor != 1.0)
                        for (int e = 0; e < acc.Length; e++) acc[e] /= node.Divisor;
                    break;
                }
            default:
                foreach (int input in node.Inputs) Evaluate(program, methods, inputs, input, at, m, source);
                methods[k]!.Compute(inputs[k], at.Global, m, output);
                break;
        }
        _stamp[k] = _generation;
    }

    private void Prepare(int nodes, int block)
    {
        if (_buffers.Length < nodes || (_buffers.Length > 0 && _buffers[0].Length < block))
        {
            int size = Math.Max(block, _buffers.Length > 0 ? _buffers[0].Length : 0);
            _buffers = new double[Math.Max(nodes, _buffers.Length)][];
            for (int i = 0; i < _buffers.Length; i++) _buffers[i] = new double[size];
            _stamp = new int[_buffers.Length];
        }
        Array.Fill(_stamp, -1);
    }
}
