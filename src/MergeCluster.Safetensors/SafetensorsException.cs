namespace MergeCluster.Safetensors;

/// <summary>What is wrong with a safetensors file, one case for each rule of the format.</summary>
public enum SafetensorsError
{
    Io,
    FileTooSmall,
    HeaderTooLarge,
    InvalidHeaderLength,
    InvalidHeaderUtf8,
    InvalidHeaderStart,
    InvalidHeaderJson,
    InvalidMetadata,
    DuplicateKey,
    UnknownDType,
    InvalidShape,
    InvalidOffsets,
    SizeOverflow,
    SizeMismatch,
    NonContiguous,
    TrailingBytes,
    MissingData,
    PickleRefused,
    NotFound,
    DTypeMismatch,
    NotRegularFile,
}

/// <summary>A typed error about one file and, where there is one, one tensor key; its message is one line.</summary>
public sealed class SafetensorsException : Exception
{
    public SafetensorsException(SafetensorsError error, string file, string? key, string detail, Exception? inner = null)
        : base(Format(file, key, detail), inner)
    {
        Error = error;
        File = file;
        Key = key;
        Detail = detail;
    }

    public SafetensorsError Error { get; }
    public string File { get; }
    public string? Key { get; }
    public string Detail { get; }

    private static string Format(string file, string? key, string detail) =>
        key is null ? $"{file}: {detail}" : $"{file}: tensor '{key}': {detail}";
}
