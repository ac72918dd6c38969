// Validates every object of a multi-document YAML stream (stdin) against its API's JSON schema: Kubernetes'
// built-in kinds (kubernetes-models), KEDA and the Prometheus Operator. Prints the objects as one JSON array on
// stdout, types as YAML gives them; a kind it has no schema for, or an invalid object, is a line on stderr
// ("Kind/name: path message") and exit code 1.
// The schemas check types, required fields, enums and formats; they allow fields they do not know, so the tests
// load the built-in kinds again with KubernetesClient's strict YAML reader, which refuses unknown fields.
import { parseAllDocuments } from "yaml";

const schemaModules = {
  "keda.sh": (version, kind) => `@kubernetes-models/keda/keda.sh/${version}/${kind}`,
  "monitoring.coreos.com": (version, kind) => `@kubernetes-models/prometheus-operator/monitoring.coreos.com/${version}/${kind}`,
};

function moduleFor(apiVersion, kind) {
  const slash = apiVersion.indexOf("/");
  if (slash < 0) return `kubernetes-models/${apiVersion}/${kind}`;          // the core group: v1
  const group = apiVersion.slice(0, slash), version = apiVersion.slice(slash + 1);
  if (schemaModules[group]) return schemaModules[group](version, kind);
  if (!group.includes(".") || group.endsWith(".k8s.io")) return `kubernetes-models/${group}/${version}/${kind}`;
  return null;
}

const input = await new Promise((resolve, reject) => {
  let text = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", chunk => (text += chunk));
  process.stdin.on("end", () => resolve(text));
  process.stdin.on("error", reject);
});

const objects = [];
const errors = [];
for (const doc of parseAllDocuments(input)) {
  if (doc.errors.length) { errors.push(`YAML: ${doc.errors.map(e => e.message).join("; ")}`); continue; }
  const object = doc.toJS();
  if (object == null) continue;
  const where = `${object.kind ?? "?"}/${object.metadata?.name ?? "?"}`;
  objects.push(object);
  if (typeof object.apiVersion !== "string" || typeof object.kind !== "string") { errors.push(`${where}: no apiVersion or kind`); continue; }
  const path = moduleFor(object.apiVersion, object.kind);
  let model;
  try { model = path && (await import(path))[object.kind]; } catch { model = undefined; }
  if (!model) { errors.push(`${where}: no schema for ${object.apiVersion} ${object.kind}`); continue; }
  try { new model(object).validate(); }
  catch (e) { errors.push(`${where}: ${e.message}`); }
}

for (const line of errors) console.error(line);
process.stdout.write(JSON.stringify(objects));
process.exit(errors.length ? 1 : 0);
