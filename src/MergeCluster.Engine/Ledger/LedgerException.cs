namespace MergeCluster.Engine.Ledger;

/// <summary>The ledger could not be reached or refused a request; its message is one line and never holds a credential.</summary>
public sealed class LedgerException(string message, Exception? inner = null) : Exception(message, inner);
