using MergeCluster.Planning;

namespace MergeCluster.Engine.Selection;

/// <summary>A running float64 total with Neumaier's compensation; adding totals in a fixed order gives fixed bits.</summary>
public struct CompensatedSum
{
    public double Sum;
    public double Compensation;

    public void Add(double x)
    {
        double t = Sum + x;
        Compensation += Math.Abs(Sum) >= Math.Abs(x) ? (Sum - t) + x : (x - t) + Sum;
        Sum = t;
    }

    public readonly double Value => Sum + Compensation;
}

/// <summary>
/// Sums over the keys of one component or block, per pair of models (upper triangle): ‖a−b‖², a·b, ‖a‖² and ‖b‖² over
/// the keys both compare, and how many keys each pair compared, could not compare (a shape mismatch) or saw on one side only.
/// </summary>
public sealed class PairTotals
{
    public PairTotals(int pairs)
    {
        SquaredDistance = new CompensatedSum[pairs];
        Dot = new CompensatedSum[pairs];
        NormA = new CompensatedSum[pairs];
        NormB = new CompensatedSum[pairs];
        Keys = new int[pairs];
        ShapeMismatches = new int[pairs];
        OneSided = new int[pairs];
        NonFiniteKeys = new int[pairs];
    }

    public CompensatedSum[] SquaredDistance { get; }
    public CompensatedSum[] Dot { get; }
    /// <summary>‖a‖² of the pair's first model (the lower index) over the keys the pair compared.</summary>
    public CompensatedSum[] NormA { get; }
    public CompensatedSum[] NormB { get; }
    public int[] Keys { get; }
    public int[] ShapeMismatches { get; }
    public int[] OneSided { get; }
    /// <summary>Keys left out of the pair because either side holds NaN or ±Inf there.</summary>
    public int[] NonFiniteKeys { get; }

    /// <summary>Adds another shard's totals (call in shard order).</summary>
    public void Add(PairTotals other)
    {
        for (int p = 0; p < Keys.Length; p++)
        {
            SquaredDistance[p].Add(other.SquaredDistance[p].Value);
            Dot[p].Add(other.Dot[p].Value);
            NormA[p].Add(other.NormA[p].Value);
            NormB[p].Add(other.NormB[p].Value);
            Keys[p] += other.Keys[p];
            ShapeMismatches[p] += other.ShapeMismatches[p];
            OneSided[p] += other.OneSided[p];
            NonFiniteKeys[p] += other.NonFiniteKeys[p];
        }
    }
}

/// <summary>
/// The partial statistics of one shard of a distance job: pair totals per component and per block, non-finite values
/// per model and component, and which pairs are known to differ byte for byte in a component. Partials of all shards,
/// added in shard order (<see cref="Add"/>), give the job's statistics with the same bits wherever each shard ran.
/// </summary>
public sealed class DistanceStatistics
{
    public DistanceStatistics(DistancePlan plan)
    {
        int pairs = plan.PairCount, n = plan.Count;
        Components = plan.Components.Select(_ => new PairTotals(pairs)).ToArray();
        Blocks = plan.Blocks.Select(_ => new PairTotals(pairs)).ToArray();
        NonFiniteValues = plan.Components.Select(_ => new long[n]).ToArray();
        Differs = plan.Components.Select(_ => new bool[pairs]).ToArray();
    }

    /// <summary>Per component of the plan, in its order.</summary>
    public PairTotals[] Components { get; }
    /// <summary>Per block of the plan (empty without blocks).</summary>
    public PairTotals[] Blocks { get; }
    /// <summary>NaN and ±Inf values per component and model.</summary>
    public long[][] NonFiniteValues { get; }
    /// <summary>Per component and pair: the two differ somewhere (a key, a dtype, a shape or a byte).</summary>
    public bool[][] Differs { get; }

    public void Add(DistanceStatistics other)
    {
        for (int c = 0; c < Components.Length; c++)
        {
            Components[c].Add(other.Components[c]);
            for (int m = 0; m < NonFiniteValues[c].Length; m++) NonFiniteValues[c][m] += other.NonFiniteValues[c][m];
            for (int p = 0; p < Differs[c].Length; p++) Differs[c][p] |= other.Differs[c][p];
        }
        for (int b = 0; b < Blocks.Length; b++) Blocks[b].Add(other.Blocks[b]);
    }

    private const int Magic = 0x4D434453; // "MCDS"

    /// <summary>The partial as bytes, every sum with its compensation, so that adding it after a round trip gives the same bits.</summary>
    public void WriteTo(Stream stream)
    {
        using var w = new BinaryWriter(stream, System.Text.Encoding.UTF8, leaveOpen: true);
        w.Write(Magic);
        w.Write(Components.Length);
        w.Write(Blocks.Length);
        w.Write(Differs.Length == 0 ? 0 : Differs[0].Length);
        w.Write(NonFiniteValues.Length == 0 ? 0 : NonFiniteValues[0].Length);
        foreach (var t in Components.Concat(Blocks))
        {
            foreach (var sums in new[] { t.SquaredDistance, t.Dot, t.NormA, t.NormB })
                foreach (var x in sums)
                {
                    w.Write(x.Sum);
                    w.Write(x.Compensation);
                }
            foreach (var counts in new[] { t.Keys, t.ShapeMismatches, t.OneSided, t.NonFiniteKeys })
                foreach (int x in counts) w.Write(x);
        }
        foreach (var values in NonFiniteValues)
            foreach (long x in values) w.Write(x);
        foreach (var differs in Differs)
            foreach (bool x in differs) w.Write(x);
    }

    /// <summary>A partial written by <see cref="WriteTo"/> for this plan; a file of another plan or cut short is an error naming it.</summary>
    public static DistanceStatistics ReadFrom(Stream stream, DistancePlan plan, string path)
    {
        var result = new DistanceStatistics(plan);
        using var r = new BinaryReader(stream, System.Text.Encoding.UTF8, leaveOpen: true);
        try
        {
            if (r.ReadInt32() != Magic || r.ReadInt32() != result.Components.Length || r.ReadInt32() != result.Blocks.Length
                || r.ReadInt32() != plan.PairCount || r.ReadInt32() != plan.Count)
                throw new Merge.MergeException($"{path}: not a partial of this distance job");
            foreach (var t in result.Components.Concat(result.Blocks))
            {
                foreach (var sums in new[] { t.SquaredDistance, t.Dot, t.NormA, t.NormB })
                    for (int p = 0; p < sums.Length; p++)
                    {
                        sums[p].Sum = r.ReadDouble();
                        sums[p].Compensation = r.ReadDouble();
                    }
                foreach (var counts in new[] { t.Keys, t.ShapeMismatches, t.OneSided, t.NonFiniteKeys })
                    for (int p = 0; p < counts.Length; p++) counts[p] = r.ReadInt32();
            }
            foreach (var values in result.NonFiniteValues)
                for (int m = 0; m < values.Length; m++) values[m] = r.ReadInt64();
            foreach (var differs in result.Differs)
                for (int p = 0; p < differs.Length; p++) differs[p] = r.ReadBoolean();
        }
        catch (EndOfStreamException e)
        {
            throw new Merge.MergeException($"{path}: distance partial cut short", e);
        }
        if (stream.ReadByte() >= 0) throw new Merge.MergeException($"{path}: distance partial longer than this job's");
        return result;
    }

    /// <summary>The shards' partials added in shard order: the job's statistics.</summary>
    public static DistanceStatistics Combine(DistancePlan plan, IEnumerable<DistanceStatistics> inShardOrder)
    {
        var total = new DistanceStatistics(plan);
        foreach (var s in inShardOrder) total.Add(s);
        return total;
    }
}
