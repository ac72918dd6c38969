# Sourced by the cluster benchmarks (bench/cluster.sh, bench/silo-start.sh), after they set $root and $work:
# starts a throwaway Azurite ($MERGECLUSTER_AZURITE, else .build/azurite, which scripts/test.sh installs) on free
# ports with a random account key, its data under $work/azurite, and exports MERGECLUSTER_STORAGE. It defines
# pids (the processes to stop) and an EXIT trap that stops them and removes $work.
azurite=${MERGECLUSTER_AZURITE:-$root/.build/azurite/node_modules/.bin/azurite}
[[ -x "$azurite" ]] || { echo "bench: azurite not found at $azurite (run bash scripts/test.sh once, or set MERGECLUSTER_AZURITE)" >&2; exit 2; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # BENCH_LOGS=DIR keeps the processes' logs (the silos', Azurite's, the last client's) for reading phases off them.
  if [[ -n "${BENCH_LOGS:-}" ]]; then mkdir -p "$BENCH_LOGS" && cp "$work"/*.log "$BENCH_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/azurite"
key=$(head -c 48 /dev/urandom | base64 -w0)
AZURITE_ACCOUNTS="bench:$key" "$azurite" --blobHost 127.0.0.1 --blobPort 0 --queueHost 127.0.0.1 --queuePort 0 --tableHost 127.0.0.1 --tablePort 0 \
  --location "$work/azurite" --disableTelemetry --skipApiVersionCheck --silent > "$work/azurite.log" 2>&1 &
pids+=($!)
port() { grep -oE "$1 service is successfully listening at http://127\.0\.0\.1:[0-9]+" "$work/azurite.log" | grep -oE '[0-9]+$'; }
for _ in $(seq 100); do [[ -n "$(port Table)" && -n "$(port Blob)" ]] && break; sleep 0.2; done
export MERGECLUSTER_STORAGE="DefaultEndpointsProtocol=http;AccountName=bench;AccountKey=$key;BlobEndpoint=http://127.0.0.1:$(port Blob)/bench;TableEndpoint=http://127.0.0.1:$(port Table)/bench"
