using System.Collections.Immutable;
using System.Globalization;
using System.Text;
using MergeCluster.Merge.Architecture;
using MergeCluster.Merge.Methods;
using MergeCluster.Safetensors;

namespace MergeCluster.Merge.Recipes;

/// <summary>
/// sd-mecha's serialized recipe format, version 0.1.0 (sd_mecha/serialization.py): after a `version 0.1.0` line,
/// one instruction per line — `model "path" model_config=… merge_space=…`, `dict k=v …`, `literal value …`,
/// `merge "method" args… k=v…` — where `&amp;n` refers to the n-th instruction and the last one is the recipe.
/// Parameters appear as sd-mecha writes them, a `dict key=v` wrapped in a singleton-mecha literal and
/// `merge "convert_singleton"`, or as plain constants.
/// </summary>
public static class MechaFormat
{
    public const string Version = "0.1.0";
    /// <summary>
    /// Deepest chain of merges a recipe may have (a chain of 40 pairwise merges needs 40): the tree is planned
    /// recursively, and a recipe can come from a downloaded file's metadata.
    /// </summary>
    public const int MaxDepth = 256;
    private const string Header = "version " + Version;
    private const string Singleton = "singleton-mecha";

    /// <summary>The model configs understood, by sd-mecha identifier.</summary>
    public static IReadOnlyDictionary<string, ModelArchitecture> Configs { get; } = new Dictionary<string, ModelArchitecture>(StringComparer.Ordinal)
    {
        ["sdxl-sgm"] = ModelArchitecture.Sdxl,
        ["sd1-ldm"] = ModelArchitecture.Sd15,
    };

    /// <summary>The sd-mecha identifier of an architecture's config.</summary>
    public static string ConfigName(ModelArchitecture architecture) =>
        Configs.FirstOrDefault(kv => kv.Value == architecture).Key ?? throw new MergeException($"{architecture.Name} has no sd-mecha model config here (sdxl-sgm, sd1-ldm)");

    /// <summary>The component names (key groups) of a config, as pick_component and omit_component take them.</summary>
    public static IReadOnlySet<string> ComponentNames(ModelArchitecture architecture) =>
        architecture.Keys.Select(k => k.Group).ToHashSet(StringComparer.Ordinal);

    public static bool IsMecha(string text) => text.TrimStart('\uFEFF').StartsWith("version", StringComparison.Ordinal);

    /// <summary>Reads a recipe; every mistake names the file, the line and the word.</summary>
    public static Recipe Parse(string text, string directory, string source) => new Reader(text, directory, source).Read();

    private abstract record Value;
    private sealed record Constant(object? Value) : Value;
    private sealed record Dict(ImmutableDictionary<string, object?> Entries) : Value;
    private sealed record SingletonLiteral(object? Value) : Value;
    private sealed record Node(RecipeNode Recipe, MergeSpace Space, int Depth = 1) : Value;

    private sealed class Reader(string text, string directory, string source)
    {
        private readonly List<Value> _results = [];
        private readonly List<RecipeModel> _models = [];
        private readonly Dictionary<string, ModelNode> _modelsByPath = new(StringComparer.Ordinal);
        private ModelArchitecture? _config;
        private int _line;

        public Recipe Read()
        {
            var lines = text.TrimStart('\uFEFF').Split('\n');
            string first = lines[0].TrimEnd('\r').Trim();
            if (first != Header)
                throw new MergeException($"{source}:1: '{first}' is not a .mecha version this reads (expected '{Header}')");
            for (int i = 1; i < lines.Length; i++)
            {
                _line = i + 1;
                string line = lines[i].TrimEnd('\r').Trim();
                if (line.Length == 0 || line.StartsWith('#')) continue;
                _results.Add(Instruction(line));
            }
            if (_results.Count == 0 || _results[^1] is not Node root)
                throw new MergeException($"{source}:{_line}: the last instruction must be a model or a merge (the recipe itself)");
            if (root.Space != MergeSpace.Weight)
                throw new MergeException($"{source}:{_line}: the recipe's result is a delta, not a model (add it to a base with add_difference)");
            return Recipe.FromTree(source, directory, text, [.. _models], root.Recipe, _config!, new RecipeOutput(null, DType.F16, 0));
        }

        private Value Instruction(string line)
        {
            var tokens = Tokenize(line);
            string command = tokens[0];
            var positional = new List<(string Token, Value Value)>();
            var named = new List<(string Name, string Token, Value Value)>();
            foreach (string token in tokens.Skip(1))
            {
                int eq = token.StartsWith('"') ? -1 : token.IndexOf('=');
                if (eq > 0) named.Add((token[..eq], token[(eq + 1)..], Parse(token[(eq + 1)..])));
                else positional.Add((token, Parse(token)));
            }
            return command switch
            {
                "dict" => DictOf(positional, named),
                "literal" => Literal(positional, named),
                "model" => Model(positional, named),
                "merge" => Merge(positional, named),
                _ => throw Error(command, "unknown instruction (expected model, merge, literal or dict)"),
            };
        }

        private Value DictOf(List<(string Token, Value Value)> positional, List<(string Name, string Token, Value Value)> named)
        {
            if (positional.Count > 0) throw Error(positional[0].Token, "dict takes only key=value entries");
            var entries = ImmutableDictionary.CreateBuilder<string, object?>(StringComparer.Ordinal);
            foreach (var (name, token, value) in named)
                entries[name] = value is Constant c ? c.Value : throw Error(token, "dict values must be constants here");
            return new Dict(entries.ToImmutable());
        }

        private Value Literal(List<(string Token, Value Value)> positional, List<(string Name, string Token, Value Value)> named)
        {
            if (positional.Count != 1) throw Error("literal", "literal takes one value");
            string? config = null;
            foreach (var (name, token, value) in named)
            {
                if (name == "model_config") config = value is Constant { Value: string s } ? s : value is Constant { Value: null } ? null : throw Error(token, "model_config must be a string");
                else if (name != "merge_space") throw Error(name, "unknown literal attribute (expected model_config, merge_space)");
            }
            var (valueToken, v) = positional[0];
            if (config == Singleton && v is Dict d && d.Entries.Count == 1 && d.Entries.TryGetValue("key", out object? single))
                return new SingletonLiteral(single);
            if (config is null && v is Constant c) return c;
            throw Error(config ?? valueToken, $"only constant parameters are supported (a {Singleton} literal of `dict key=VALUE`, or a number); per-key or per-block literals are not");
        }

        private Value Model(List<(string Token, Value Value)> positional, List<(string Name, string Token, Value Value)> named)
        {
            if (positional.Count != 1 || positional[0].Value is not Constant { Value: string path })
                throw Error(positional.FirstOrDefault().Token ?? "model", "model takes one quoted path");
            // As in a YAML recipe: no file name holds a NUL, and the C calls that open files would cut the path there.
            if (path.Contains('\0')) throw Error(path.Replace("\0", "\\0"), "model path contains a NUL character");
            ModelArchitecture? config = null;
            var space = MergeSpace.Weight;
            foreach (var (name, token, value) in named)
            {
                switch (name)
                {
                    case "model_config":
                        if (value is not Constant { Value: string c } || !Configs.TryGetValue(c, out config))
                            throw Error(token, $"unsupported model_config (expected {string.Join(" or ", Configs.Keys)})");
                        break;
                    case "merge_space":
                        space = value switch
                        {
                            Constant { Value: "weight" or null } => MergeSpace.Weight,
                            Constant { Value: "delta" } => MergeSpace.Delta,
                            _ => throw Error(token, "unsupported merge_space (expected \"weight\" or \"delta\")"),
                        };
                        break;
                    default:
                        throw Error(name, "unknown model attribute (expected model_config, merge_space)");
                }
            }
            if (config is null) throw Error(path, "model needs model_config=\"sdxl-sgm\" or \"sd1-ldm\"");
            if (_config is not null && _config != config)
                throw Error(ConfigName(config), $"every model must have one config; earlier models are {ConfigName(_config)}");
            _config = config;
            if (!_modelsByPath.TryGetValue(path, out var node))
            {
                string name = UniqueName(path);
                _models.Add(new RecipeModel(name, path, _line));
                node = _modelsByPath[path] = new ModelNode(name, _line);
            }
            return new Node(node, space);
        }

        private string UniqueName(string path)
        {
            string stem = Path.GetFileNameWithoutExtension(path);
            if (stem.Length == 0) stem = "model";
            string name = stem;
            for (int i = 2; _models.Any(m => m.Name == name); i++) name = $"{stem}_{i}";
            return name;
        }

        private Value Merge(List<(string Token, Value Value)> positional, List<(string Name, string Token, Value Value)> named)
        {
            if (positional.Count == 0 || positional[0].Value is not Constant { Value: string methodName })
                throw Error("merge", "merge takes a quoted method name first");
            var args = positional.Skip(1).ToList();
            if (methodName == "convert_singleton")
            {
                if (args.Count != 1 || named.Count != 0 || args[0].Value is not SingletonLiteral s)
                    throw Error(methodName, "convert_singleton takes one singleton-mecha literal");
                return new Constant(s.Value);
            }
            var method = MergeMethods.Find(methodName);
            if (method is null || method.Citation is null)
                throw Error(methodName, $"unsupported merge method (supported: {string.Join(", ", MergeMethods.All.Values.Where(m => m.Citation is not null).Select(m => m.Name).Order())})");

            int inputCount = method.IsVariadic ? args.Count : Math.Min(args.Count, method.MaxInputs);
            var inputs = new List<Node>();
            for (int i = 0; i < inputCount; i++)
                inputs.Add(args[i].Value as Node ?? throw Error(args[i].Token, $"{methodName}: input {i + 1} must be a model or merge (&n)"));
            if (inputs.Count < method.MinInputs)
                throw Error(methodName, $"takes at least {method.MinInputs} input{(method.MinInputs == 1 ? "" : "s")}, got {inputs.Count}");

            var given = new Dictionary<string, object?>(StringComparer.Ordinal);
            var extra = args.Skip(inputCount).ToList();
            if (extra.Count > method.PositionalParameters)
                throw Error(extra[method.PositionalParameters].Token, $"{methodName} takes {method.PositionalParameters} positional parameter(s) after its inputs");
            for (int i = 0; i < extra.Count; i++) given[method.Parameters[i].Name] = ConstantOf(extra[i].Token, extra[i].Value);
            foreach (var (name, token, value) in named)
            {
                if (given.ContainsKey(name)) throw Error(name, "given twice");
                given[name] = ConstantOf(token, value);
            }
            MethodArguments arguments;
            try { arguments = method.Bind(given); }
            catch (MergeException e) { throw Error(methodName, e.Message); }
            Check(method, arguments, methodName);

            var space = Space(method, inputs, methodName);
            int depth = 1 + inputs.Max(n => n.Depth);
            if (depth > MaxDepth) throw Error(methodName, $"the recipe chains more than {MaxDepth} merges");
            return new Node(new MergeNode(method, [.. inputs.Select(n => n.Recipe)], arguments, _line), space, depth);
        }

        private void Check(MergeMethodDefinition method, MethodArguments arguments, string word)
        {
            if (method == MergeMethods.TiesSumWithDropout && arguments.Number("della_eps") != 0)
                throw Error("della_eps", "DELLA (della_eps other than 0) is not supported: its drop probabilities need every element's rank");
            foreach (string p in new[] { "k", "probability" })
                if (method.Parameters.Any(s => s.Name == p) && arguments.Number(p) is < 0 or > 1)
                    throw Error(p, $"must be between 0 and 1, got {arguments.Number(p)}");
            if (method == MergeMethods.PickComponent || method == MergeMethods.OmitComponent)
            {
                string component = arguments.Text("component");
                var names = ComponentNames(_config ?? ModelArchitecture.Sdxl);
                if (!names.Contains(component))
                    throw Error(component, $"no such component in {(_config is null ? "the config" : ConfigName(_config))} (expected {string.Join(", ", names.Order())})");
            }
        }

        private MergeSpace Space(MergeMethodDefinition method, List<Node> inputs, string word)
        {
            if (method.SecondInputIsDelta)
            {
                if (inputs[1].Space != MergeSpace.Delta) throw Error(word, "its second input must be a delta (subtract a base from a model first)");
                return inputs[0].Space;
            }
            if (method.InputSpace != MergeSpace.Same)
                foreach (var input in inputs)
                    if (input.Space != method.InputSpace)
                        throw Error(word, method.InputSpace == MergeSpace.Delta ? "takes deltas (subtract a base from each model first)" : "takes models, not deltas");
            if (method.Kind != MethodKind.Selection && inputs.Any(i => i.Space != inputs[0].Space))
                throw Error(word, "mixes models and deltas");
            return method.OutputSpace == MergeSpace.Same ? inputs[0].Space : method.OutputSpace;
        }

        private object? ConstantOf(string token, Value value) => value switch
        {
            Constant c => c.Value,
            SingletonLiteral s => s.Value,
            _ => throw Error(token, "a parameter must be a constant (a number, true/false, a string, or convert_singleton of one)"),
        };

        /// <summary>sd-mecha's get_arg_value: null/true/false, &amp;n, "string", a float when it has '.' or 'e', else an int.</summary>
        private Value Parse(string token)
        {
            switch (token)
            {
                case "null": return new Constant(null);
                case "true": return new Constant(true);
                case "false": return new Constant(false);
            }
            if (token.StartsWith('&'))
            {
                if (!int.TryParse(token.AsSpan(1), NumberStyles.None, CultureInfo.InvariantCulture, out int index) || index >= _results.Count)
                    throw Error(token, $"reference out of bounds (there are {_results.Count} instructions before this line)");
                return _results[index];
            }
            if (token.Length >= 2 && token[0] == '"' && token[^1] == '"') return new Constant(token[1..^1]);
            if (token.Contains('.') || token.Contains('e', StringComparison.OrdinalIgnoreCase))
                return double.TryParse(token, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) ? new Constant(d) : throw Error(token, "not a number");
            return long.TryParse(token, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long l) ? new Constant(l) : throw Error(token, "not a value (expected &n, \"text\", a number, true, false or null)");
        }

        /// <summary>sd-mecha's tokenize: spaces separate tokens outside quotes; a backslash escapes the next character.</summary>
        private List<string> Tokenize(string line)
        {
            var tokens = new List<string>();
            var current = new StringBuilder();
            string prefix = "";
            bool quoted = false, escape = false;
            foreach (char ch in line)
            {
                if (escape) escape = false;
                else if (ch == '\\') { escape = true; continue; }
                else if (ch == '"')
                {
                    quoted = !quoted;
                    if (quoted) { prefix = current.ToString(); current.Clear(); }
                    else { tokens.Add($"{prefix}\"{current}\""); current.Clear(); prefix = ""; }
                    continue;
                }
                else if (ch == ' ' && !quoted)
                {
                    if (current.Length > 0) { tokens.Add(current.ToString()); current.Clear(); }
                    continue;
                }
                current.Append(ch);
            }
            if (quoted) throw Error(line, "mismatched quotes");
            if (current.Length > 0) tokens.Add(current.ToString());
            return tokens;
        }

        private MergeException Error(string word, string message) => new($"{source}:{_line}: '{word}': {message}");
    }

    /// <summary>
    /// Writes a tree as sd-mecha's serializer does (identical instructions shared, every parameter a singleton literal),
    /// so sd-mecha's own <c>deserialize</c> reads it. No trailing newline: sd-mecha's parser rejects an empty last line.
    /// </summary>
    public static string Write(RecipeNode root, Func<ModelNode, string> pathOf, ModelArchitecture config, IEnumerable<string>? comments = null)
    {
        var lines = new List<string>();
        string configName = ConfigName(config);
        string Add(string instruction)
        {
            int i = lines.IndexOf(instruction);
            if (i < 0) { lines.Add(instruction); i = lines.Count - 1; }
            return $"&{i}";
        }
        string Parameter(object? value)
        {
            string dict = Add($"dict key={MethodArguments.Format(value)}");
            string literal = Add($"literal {dict} model_config=\"{Singleton}\" merge_space=\"param\"");
            return Add($"merge \"convert_singleton\" {literal}");
        }
        var memo = new Dictionary<RecipeNode, string>(ReferenceEqualityComparer.Instance);
        string Visit(RecipeNode node)
        {
            if (memo.TryGetValue(node, out string? known)) return known;
            string result;
            if (node is ModelNode model)
                result = Add($"model {MethodArguments.Format(pathOf(model))} model_config=\"{configName}\" merge_space=\"weight\"");
            else
            {
                var merge = (MergeNode)node;
                if (merge.Method.Citation is null)
                    throw new MergeException($"line {merge.Line}: {merge.Method.Name} is MergeCluster's own method; sd-mecha has no equivalent, so it cannot be written as .mecha");
                var parts = new List<string> { "merge", MethodArguments.Format(merge.Method.Name) };
                parts.AddRange(merge.Inputs.Select(Visit));
                var parameters = merge.Method.Parameters;
                for (int i = 0; i < parameters.Length; i++)
                {
                    string value = Parameter(merge.Arguments[parameters[i].Name]);
                    parts.Add(i < merge.Method.PositionalParameters ? value : $"{parameters[i].Name}={value}");
                }
                result = Add(string.Join(" ", parts));
            }
            memo[node] = result;
            return result;
        }
        Visit(root);
        var text = new StringBuilder(Header);
        foreach (string c in comments ?? []) text.Append("\n# ").Append(c.ReplaceLineEndings(" "));
        foreach (string line in lines) text.Append('\n').Append(line);
        return text.ToString();
    }
}
