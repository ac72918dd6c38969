#!/usr/bin/env bash
# Cluster overhead benchmark: the same mean recipe merged locally with 2 threads and by 2 Orleans silos (1 thread
# each) on this machine, over a throwaway Azurite. Prints both times, the overhead, the storage writes per task, and
# checks that both outputs are bit-identical. The local merge is a fresh process, as users run it; so is each
# submit --wait client. The silos are long-running: their first job (cold: JIT) is reported apart, then local and
# cluster runs alternate --rounds times, so a noisy minute on a shared host hits both; best and median are compared.
#
#   bench/cluster.sh FILE FILE... [--group G] [--shard-mb N] [--silos N] [--silo-threads T] [--rounds R] [--shape auto|fused|tree]
#
# Azurite comes from $MERGECLUSTER_AZURITE or .build/azurite (scripts/test.sh installs it there).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mc="$root/mergecluster"
group=8 shard=256 silos=2 silo_threads=1 rounds=3 shape=auto files=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --group) group=$2; shift 2 ;;
    --shard-mb) shard=$2; shift 2 ;;
    --silos) silos=$2; shift 2 ;;
    --silo-threads) silo_threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --shape) shape=$2; shift 2 ;;
    *) files+=("$(realpath "$1")"); shift ;;
  esac
done
[[ ${#files[@]} -ge 2 ]] || { echo "usage: bench/cluster.sh FILE FILE... [--group G] [--shard-mb N] [--silos N] [--silo-threads T] [--rounds R] [--shape S]" >&2; exit 2; }
azurite=${MERGECLUSTER_AZURITE:-$root/.build/azurite/node_modules/.bin/azurite}
[[ -x "$azurite" ]] || { echo "bench: azurite not found at $azurite (run bash scripts/test.sh once, or set MERGECLUSTER_AZURITE)" >&2; exit 2; }

work=$(mktemp -d /var/tmp/mc-cluster-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/azurite" "$work/data"
key=$(head -c 48 /dev/urandom | base64 -w0)
AZURITE_ACCOUNTS="bench:$key" "$azurite" --blobHost 127.0.0.1 --blobPort 0 --queueHost 127.0.0.1 --queuePort 0 --tableHost 127.0.0.1 --tablePort 0 \
  --location "$work/azurite" --disableTelemetry --skipApiVersionCheck --silent > "$work/azurite.log" 2>&1 &
pids+=($!)
port() { grep -oE "$1 service is successfully listening at http://127\.0\.0\.1:[0-9]+" "$work/azurite.log" | grep -oE '[0-9]+$'; }
for _ in $(seq 100); do [[ -n "$(port Table)" && -n "$(port Blob)" ]] && break; sleep 0.2; done
export MERGECLUSTER_STORAGE="DefaultEndpointsProtocol=http;AccountName=bench;AccountKey=$key;BlobEndpoint=http://127.0.0.1:$(port Blob)/bench;TableEndpoint=http://127.0.0.1:$(port Table)/bench"
export MERGECLUSTER_CLUSTER_ID="bench$$"

{
  echo "models:"
  for i in "${!files[@]}"; do echo "  m$i: \"${files[$i]}\""; done
  echo "components:"
  echo -n "  all: { method: mean, models: ["; for i in "${!files[@]}"; do [[ $i -gt 0 ]] && echo -n ", "; echo -n "m$i"; done; echo "] }"
  echo "output: { path: cluster.safetensors, dtype: f16 }"
  echo "reduce: { group: $group }"
} > "$work/data/recipe.yaml"
bytes=$(stat -c %s "${files[@]}" | awk '{s+=$1} END {print s}')
cat "${files[@]}" > /dev/null  # warm the page cache for both runs
"$mc" --help > /dev/null      # build the CLI now, not inside a timed run
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f\n", b - a }'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

roots=(--data-root "$work/data")
for f in "${files[@]}"; do roots+=(--data-root "$(dirname "$f")"); done
names=$(seq -f "s%g" "$silos")
for s in $names; do
  "$mc" silo --name "$s" --threads "$silo_threads" "${roots[@]}" --advertised-ip 127.0.0.1 \
    --silo-port "$(free_port)" --gateway-port "$(free_port)" > "$work/$s.log" 2>&1 &
  pids+=($!)
done
for s in $names; do
  for _ in $(seq 300); do grep -q "is ready" "$work/$s.log" 2>/dev/null && break; sleep 0.2; done
  grep -q "is ready" "$work/$s.log" || { echo "bench: silo $s did not start:" >&2; cat "$work/$s.log" >&2; exit 1; }
done
silo_pids=("${pids[@]:1}")
cpu() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
self_cpu() { awk '{print $16 + $17}' /proc/$$/stat; }  # finished children of this shell
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# The first job on fresh silos pays their JIT (thousands of methods compiled, then recompiled at tier 1 while the
# merge runs: seconds of CPU on 2 cores). It is reported as "cold" and not compared.
start=$(now)
"$mc" submit "$work/data/recipe.yaml" --wait --no-hash --shard-mb "$shard" --shape "$shape" > /dev/null 2>&1
cold_s=$(since "$start")
rm -f "$work/data/cluster.safetensors"

local_times=() cluster_times=() local_cpu=0 silo_cpu=0 tasks=0 writes=0 same=yes
for round in $(seq "$rounds"); do
  cat "${files[@]}" > /dev/null
  c0=$(self_cpu); start=$(now)
  "$mc" merge "$work/data/recipe.yaml" -o "$work/data/local.safetensors" --threads 2 --no-hash > /dev/null
  local_times+=("$(since "$start")"); local_cpu=$((local_cpu + $(self_cpu) - c0))
  # Keep only the local output's hash: its bytes in the page cache would push inputs out during the cluster run.
  local_sha=$(sha256sum "$work/data/local.safetensors" | cut -d' ' -f1)
  rm -f "$work/data/local.safetensors"

  cat "${files[@]}" > /dev/null
  s0=$(cpu "${silo_pids[@]}"); c0=$(self_cpu)
  start=$(now)
  job=$("$mc" submit "$work/data/recipe.yaml" --wait --no-hash --shard-mb "$shard" --shape "$shape" 2> "$work/submit.log" | head -1)
  cluster_times+=("$(since "$start")")
  silo_cpu=$((silo_cpu + $(cpu "${silo_pids[@]}") - s0 + $(self_cpu) - c0))  # the client's CPU counts too
  status=$("$mc" status "$job" --json)
  tasks=$((tasks + $(echo "$status" | field "d['tasks']['done']")))
  writes=$((writes + $(echo "$status" | field "d['storage_writes']")))
  shape_used=$(echo "$status" | field "d['shape']")
  [[ "$(sha256sum "$work/data/cluster.safetensors" | cut -d' ' -f1)" == "$local_sha" ]] || same=no
  rm -f "$work/data/cluster.safetensors"
done
stats() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%s %s\n", v[1], (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
read -r local_best local_median < <(stats "${local_times[@]}")
read -r cluster_best cluster_median < <(stats "${cluster_times[@]}")
awk -v b="$bytes" -v lb="$local_best" -v lm="$local_median" -v cb="$cluster_best" -v cm="$cluster_median" -v r="$rounds" \
    -v t="$tasks" -v w="$writes" -v same="$same" -v n="${#files[@]}" -v lcpu="$local_cpu" -v scpu="$silo_cpu" -v hz="$(getconf CLK_TCK)" \
    -v shape="${silos}x${silo_threads}" -v cold="$cold_s" -v lt="${local_times[*]}" -v ct="${cluster_times[*]}" -v su="$shape_used" -v load="$(cut -d' ' -f1-3 /proc/loadavg)" 'BEGIN {
  printf "inputs:          %d files, %.2f GB; %d rounds, local and cluster alternating; load average %s\n", n, b / 1e9, r, load
  printf "local (2 thr):   best %.2f s (%.2f GB/s), median %.2f s   [%s]\n", lb, b / lb / 1e9, lm, lt
  printf "cluster (%s):   best %.2f s (%.2f GB/s), median %.2f s   [%s], %d %s tasks each\n", shape, cb, b / cb / 1e9, cm, ct, t / r, su
  printf "overhead:        %+.1f%% best to best, %+.1f%% median to median (cold silos, first job: %.2f s, %+.1f%%)\n", (cb / lb - 1) * 100, (cm / lm - 1) * 100, cold, (cold / lm - 1) * 100
  printf "cpu time:        local %.1f s, silos and client %.1f s per run (user + system, whole processes)\n", lcpu / hz / r, scpu / hz / r
  printf "storage:         %.2f writes of the job record per task (%d per job), plus 3 per job (registry, reminder on and off); none per tensor\n", w / t, w / r
  printf "bit-identical:   %s\n", same
}'
