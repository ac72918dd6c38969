using System.Globalization;
using System.Text;

namespace MergeCluster.Cluster.Tests.Infrastructure;

/// <summary>One sample of a Prometheus text exposition: the metric name as exported, its labels and its value.</summary>
public sealed record PrometheusSample(string Name, IReadOnlyDictionary<string, string> Labels, double Value);

/// <summary>A /metrics response read the way Prometheus reads the text format (0.0.4): TYPE lines and samples.</summary>
public sealed class PrometheusText
{
    public IReadOnlyList<PrometheusSample> Samples { get; }

    /// <summary>Metric family name to its type (counter, gauge, histogram, ...).</summary>
    public IReadOnlyDictionary<string, string> Types { get; }

    private PrometheusText(List<PrometheusSample> samples, Dictionary<string, string> types) => (Samples, Types) = (samples, types);

    public IEnumerable<string> Names => Samples.Select(s => s.Name).Distinct();

    /// <summary>The sum of every series of <paramref name="name"/>; throws when the metric is absent.</summary>
    public double Sum(string name)
    {
        var series = Samples.Where(s => s.Name == name).ToList();
        if (series.Count == 0) throw new Xunit.Sdk.XunitException($"/metrics has no {name}; it has {string.Join(", ", Names.Order())}");
        return series.Sum(s => s.Value);
    }

    public static PrometheusText Parse(string text)
    {
        var samples = new List<PrometheusSample>();
        var types = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var raw in text.Split('\n'))
        {
            var line = raw.TrimEnd('\r');
            if (line.Length == 0) continue;
            if (line.StartsWith("# TYPE ", StringComparison.Ordinal))
            {
                var parts = line.Split(' ');
                types[parts[2]] = parts[3];
                continue;
            }
            if (line[0] == '#') continue;
            int i = 0;
            while (i < line.Length && line[i] != '{' && line[i] != ' ') i++;
            string name = line[..i];
            var labels = new Dictionary<string, string>(StringComparer.Ordinal);
            if (i < line.Length && line[i] == '{')
            {
                i++;
                while (line[i] != '}')
                {
                    int eq = line.IndexOf('=', i);
                    string key = line[i..eq].TrimStart(',', ' ');
                    var value = new StringBuilder();
                    for (i = eq + 2; line[i] != '"'; i++)
                    {
                        if (line[i] == '\\') i++;
                        value.Append(line[i] == 'n' && line[i - 1] == '\\' ? '\n' : line[i]);
                    }
                    labels[key] = value.ToString();
                    i++;
                    if (line[i] == ',') i++;
                }
                i++;
            }
            var fields = line[i..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            samples.Add(new PrometheusSample(name, labels, double.Parse(fields[0], CultureInfo.InvariantCulture)));
        }
        return new PrometheusText(samples, types);
    }
}
