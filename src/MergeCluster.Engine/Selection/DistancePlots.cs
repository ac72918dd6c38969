using MergeCluster.Safetensors;
using ScottPlot;

namespace MergeCluster.Engine.Selection;

/// <summary>The PNG plots of a distance report: heatmaps, distance to the base, an MDS map, distance per block.</summary>
public static class DistancePlots
{
    /// <summary>Writes every plot the report allows into <paramref name="dir"/>; returns the files written.</summary>
    public static IReadOnlyList<string> Write(DistanceReport report, string dir)
    {
        var files = new List<string>();
        int n = report.Models.Count;
        int width = Math.Max(900, 60 * n), height = Math.Max(700, 45 * n);
        foreach (var c in report.Components)
        {
            if (c.Keys == 0) continue;
            files.Add(Save(Heatmap(report, c), Path.Combine(dir, $"{c.Name}-heatmap.png"), width, height));
            files.Add(Save(Map(report, c), Path.Combine(dir, $"{c.Name}-mds.png"), width, height));
            if (report.Base is not null) files.Add(Save(ToBase(report, c), Path.Combine(dir, $"{c.Name}-to-base.png"), width, 600));
        }
        if (report.Blocks.Count > 0 && report.Base is not null)
            files.Add(Save(BlocksToBase(report), Path.Combine(dir, "blocks-to-base.png"), Math.Max(1200, 50 * report.Blocks.Count), 700));
        return files;
    }

    private static string Save(Plot plot, string path, int width, int height)
    {
        // Not SavePng, which writes through whatever the path names (a planted symlink included) and can leave half a file.
        OutputTemp.WriteWhole(path, plot.GetImageBytes(width, height, ImageFormat.Png));
        return path;
    }

    /// <summary>The L2 matrix as colours, model names on both axes, the first model at the top left.</summary>
    private static Plot Heatmap(DistanceReport report, DistanceMatrix m)
    {
        int n = report.Models.Count;
        var plot = new Plot();
        var cells = new double[n, n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) cells[i, j] = m.L2[i, j];
        var heatmap = plot.Add.Heatmap(cells);
        heatmap.Colormap = new ScottPlot.Colormaps.Viridis();
        heatmap.NaNCellColor = Colors.LightGray;
        plot.Add.ColorBar(heatmap).Label = "L2 distance";
        // A heatmap draws row 0 at the top, cell (i, j) centred on x = j, y = n - 1 - i.
        var positions = Enumerable.Range(0, n).Select(i => (double)i).ToArray();
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(positions, [.. report.Models]);
        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(positions.Select(p => n - 1 - p).ToArray(), [.. report.Models]);
        plot.Axes.Bottom.TickLabelStyle.Rotation = 45;
        plot.Axes.Bottom.TickLabelStyle.Alignment = Alignment.MiddleLeft;
        plot.Axes.Bottom.MinimumSize = 120;
        plot.Title($"{m.Name}: L2 distance between models ({m.Keys} keys)");
        return plot;
    }

    /// <summary>Each model's distance to the base, in argument order: the notes' L2 diagram.</summary>
    private static Plot ToBase(DistanceReport report, DistanceMatrix m)
    {
        int n = report.Models.Count;
        var plot = new Plot();
        var xs = Enumerable.Range(1, n - 1).Select(i => (double)i).ToArray();
        var ys = xs.Select(x => m.L2[0, (int)x]).ToArray();
        var line = plot.Add.Scatter(xs, ys);
        line.MarkerSize = 8;
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(xs, report.Models.Skip(1).ToArray());
        plot.Axes.Bottom.TickLabelStyle.Rotation = 45;
        plot.Axes.Bottom.TickLabelStyle.Alignment = Alignment.MiddleLeft;
        plot.Axes.Bottom.MinimumSize = 120;
        plot.Axes.Left.Label.Text = $"L2 distance to {report.Base}";
        plot.Axes.SetLimitsY(0, Math.Max(1e-12, ys.Where(double.IsFinite).DefaultIfEmpty(1).Max()) * 1.1);
        plot.Title($"{m.Name}: distance to {report.Base}");
        return plot;
    }

    /// <summary>The models placed by classical MDS of the L2 matrix, labelled; the far-away ones in red.</summary>
    private static Plot Map(DistanceReport report, DistanceMatrix m)
    {
        int n = report.Models.Count;
        var xy = ClassicalMds.Embed(m.L2);
        var far = FarAway(m);
        var plot = new Plot();
        for (int i = 0; i < n; i++)
        {
            var color = far[i] ? Colors.Red : i == 0 && report.Base is not null ? Colors.Black : Colors.Blue;
            var point = plot.Add.Marker(xy[i, 0], xy[i, 1], MarkerShape.FilledCircle, far[i] ? 14 : 9, color);
            var label = plot.Add.Text(report.Models[i], xy[i, 0], xy[i, 1]);
            label.LabelFontColor = color;
            label.LabelFontSize = far[i] ? 16 : 12;
            label.LabelBold = far[i];
            label.OffsetX = 8;
            _ = point;
        }
        plot.Axes.Margins(0.15, 0.15);
        plot.Axes.SquareUnits(); // distances on the map read the same in every direction
        plot.Axes.Left.Label.Text = "MDS 2";
        plot.Axes.Bottom.Label.Text = "MDS 1";
        plot.Title($"{m.Name}: map of the models (classical MDS of L2 distances); red: far from the rest");
        return plot;
    }

    /// <summary>Models whose mean distance to the others exceeds 1.5 times the median of those means.</summary>
    public static bool[] FarAway(DistanceMatrix m)
    {
        int n = m.L2.GetLength(0);
        var means = new double[n];
        for (int i = 0; i < n; i++)
        {
            var row = Enumerable.Range(0, n).Where(j => j != i && double.IsFinite(m.L2[i, j])).Select(j => m.L2[i, j]).ToArray();
            means[i] = row.Length == 0 ? 0 : row.Average();
        }
        var sorted = means.Order().ToArray();
        double median = sorted.Length == 0 ? 0 : sorted[sorted.Length / 2];
        return means.Select(x => n > 2 && median > 0 && x > 1.5 * median).ToArray();
    }

    /// <summary>Per block (BASE, IN00 ... OUT08), each model's distance to the base: one line per model.</summary>
    private static Plot BlocksToBase(DistanceReport report)
    {
        var plot = new Plot();
        var xs = Enumerable.Range(0, report.Blocks.Count).Select(i => (double)i).ToArray();
        for (int model = 1; model < report.Models.Count; model++)
        {
            var ys = report.Blocks.Select(b => b.L2[0, model]).ToArray();
            var line = plot.Add.Scatter(xs, ys);
            line.LegendText = report.Models[model];
            line.MarkerSize = 6;
        }
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(xs, report.Blocks.Select(b => b.Name).ToArray());
        plot.Axes.Bottom.TickLabelStyle.Rotation = 45;
        plot.Axes.Bottom.TickLabelStyle.Alignment = Alignment.MiddleLeft;
        plot.Axes.Bottom.MinimumSize = 80;
        plot.Axes.Left.Label.Text = $"L2 distance to {report.Base}";
        plot.ShowLegend(Edge.Right);
        plot.Title($"distance to {report.Base} per UNET block");
        return plot;
    }
}
