using MergeCluster.Engine.Execution;

namespace MergeCluster.Cluster.Contracts;

/// <summary>Between the wire's <see cref="JobSettings"/> and the engine's <see cref="MergeJobOptions"/>.</summary>
public static class JobSettingsExtensions
{
    public static MergeJobOptions ToOptions(this JobSettings settings) => new()
    {
        Shape = Enum.Parse<TaskShape>(settings.Shape, ignoreCase: true),
        ShardBytes = settings.ShardBytes,
        HashInputs = settings.HashInputs,
        Output = settings.Output,
        DType = settings.DType,
        NonFinite = settings.NonFinite is { } policy ? Enum.Parse<NonFinitePolicy>(policy, ignoreCase: true) : NonFinitePolicy.Warn,
    };

    public static JobSettings ToSettings(this MergeJobOptions options) =>
        new(options.Shape.ToString(), options.ShardBytes, options.HashInputs, options.Output, options.DType, options.NonFinite.ToString());
}
