using System.Text;

namespace MergeCluster.Cluster;

/// <summary>
/// Text from files (key names, metadata, paths, recipe names) shown to a human: control characters are written out
/// as escapes, so a checkpoint cannot send the terminal commands (ESC and OSC sequences; OSC 52 writes the clipboard)
/// or forge lines. `--json` output is exact and does not go through here.
/// </summary>
public static class Terminal
{
    public static string Escape(string? text)
    {
        if (text is null) return "";
        int i = 0;
        while (i < text.Length && !NeedsEscape(text, i)) i++;
        if (i == text.Length) return text;
        var b = new StringBuilder(text.Length + 16).Append(text, 0, i);
        for (; i < text.Length; i++)
        {
            char c = text[i];
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                b.Append(c).Append(text[++i]);
                continue;
            }
            if (!NeedsEscape(text, i)) b.Append(c);
            else if (c <= 0xFF) b.Append("\\x").Append(((int)c).ToString("x2"));
            else b.Append("\\u").Append(((int)c).ToString("x4"));
        }
        return b.ToString();
    }

    /// <summary>C0 (tab and newline included: one value stays one cell, one error one line), DEL, C1, bidirectional overrides, line separators and lone surrogates.</summary>
    private static bool NeedsEscape(string text, int i)
    {
        char c = text[i];
        if (c < 0x20 || c is >= '\u007f' and <= '\u009f') return true;
        if (c is >= '\u202a' and <= '\u202e' or >= '\u2066' and <= '\u2069' or '\u2028' or '\u2029' or '\u200e' or '\u200f' or '\u061c') return true;
        if (char.IsHighSurrogate(c)) return i + 1 >= text.Length || !char.IsLowSurrogate(text[i + 1]);
        return char.IsLowSurrogate(c) && (i == 0 || !char.IsHighSurrogate(text[i - 1]));
    }

    /// <summary>A writer whose lines are escaped: for log output that quotes errors, keys and paths from files.</summary>
    public sealed class EscapingWriter(TextWriter inner) : TextWriter
    {
        public override Encoding Encoding => inner.Encoding;
        public override void Write(char value) => inner.Write(Escape(value.ToString()));
        public override void Write(string? value) => inner.Write(Escape(value));
        public override void WriteLine(string? value) => inner.WriteLine(Escape(value));
        public override void WriteLine() => inner.WriteLine();
        public override void Flush() => inner.Flush();
    }
}
