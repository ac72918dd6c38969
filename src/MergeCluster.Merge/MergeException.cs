namespace MergeCluster.Merge;

/// <summary>A user-facing error in a recipe, a plan or a merge; its message is one line that names the file and key.</summary>
public class MergeException(string message, Exception? inner = null) : Exception(message, inner);
