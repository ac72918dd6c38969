#!/usr/bin/env bash
# Cluster overhead benchmark: the same mean recipe merged locally with 2 threads and by 2 silos (1 thread each) on
# this machine, over a throwaway PostgreSQL ledger. Prints both times, the overhead, the ledger transactions per task,
# and checks that both outputs are bit-identical. The local merge is a fresh process, as users run it; the silos run
# the job twice, and the second (warm) run is compared, as silos are long-running.
#
#   bench/cluster.sh FILE FILE... [--group G] [--shard-mb N] [--silos N] [--silo-threads T]
#
# PG_EXTRA adds server settings, e.g. PG_EXTRA="-c synchronous_commit=off" to see what the WAL flush costs per task.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mc="$root/mergecluster"
group=8 shard=256 silos=2 silo_threads=1 files=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --group) group=$2; shift 2 ;;
    --shard-mb) shard=$2; shift 2 ;;
    --silos) silos=$2; shift 2 ;;
    --silo-threads) silo_threads=$2; shift 2 ;;
    *) files+=("$(realpath "$1")"); shift ;;
  esac
done
[[ ${#files[@]} -ge 2 ]] || { echo "usage: bench/cluster.sh FILE FILE... [--group G] [--shard-mb N]" >&2; exit 2; }

pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d /var/tmp/mc-cluster-bench.XXXXXX)
chown postgres "$work"
port=$((20000 + RANDOM % 20000))
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" stop -m immediate >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

runuser -u postgres -- "$pgbin/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -o "-p $port -k $work -c listen_addresses=127.0.0.1 ${PG_EXTRA:-}" -l "$work/pg.log" start >/dev/null
export MERGECLUSTER_LEDGER="Host=127.0.0.1;Port=$port;Username=postgres;Database=postgres"
psql() { "$pgbin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atc "$1"; }

mkdir -p "$work/data"
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
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { print b - a }'; }

start=$(now)
read -r cu0 cs0 < <(awk '{print $16, $17}' /proc/$$/stat)
"$mc" merge "$work/data/recipe.yaml" -o "$work/data/local.safetensors" --threads 2 --no-hash > /dev/null
local_s=$(since "$start")
read -r cu1 cs1 < <(awk '{print $16, $17}' /proc/$$/stat)
local_cpu=$(( cu1 + cs1 - cu0 - cs0 ))
# Keep only the local output's hash: its 4 GB in the page cache would push inputs out during the cluster run.
local_sha=$(sha256sum "$work/data/local.safetensors" | cut -d' ' -f1)
rm -f "$work/data/local.safetensors"
cat "${files[@]}" > /dev/null

roots=(--data-root "$work/data")
for f in "${files[@]}"; do roots+=(--data-root "$(dirname "$f")"); done
names=$(seq -f "s%g" "$silos")
for s in $names; do
  "$mc" silo --name "$s" --threads "$silo_threads" "${roots[@]}" > "$work/$s.log" 2>&1 &
  pids+=($!)
done
for s in $names; do
  for _ in $(seq 100); do grep -q "joined with" "$work/$s.log" && break; sleep 0.2; done
done
# The first job on fresh silos pays their JIT (thousands of methods compiled and then recompiled at tier 1 while the
# merge runs, seconds of CPU on 2 cores). Silos are long-running, so the job is run twice: the first is reported as
# "cold", the second is the timed one. The client is a fresh process both times, as users run it.
start=$(now)
"$mc" submit "$work/data/recipe.yaml" --wait --no-hash --shard-mb "$shard" > /dev/null 2>&1
cold_s=$(since "$start")
rm -f "$work/data/cluster.safetensors"
cpu() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
silo_cpu0=$(cpu "${pids[@]}")
tx0=$(psql "select xact_commit + xact_rollback from pg_stat_database where datname = 'postgres'")
start=$(now)
job=$("$mc" submit "$work/data/recipe.yaml" --wait --no-hash --shard-mb "$shard" 2> "$work/submit.log")
cluster_s=$(since "$start")
end=$(now)
silo_cpu=$(( $(cpu "${pids[@]}") - silo_cpu0 ))
tx1=$(psql "select xact_commit + xact_rollback from pg_stat_database where datname = 'postgres'")
tasks=$(psql "select count(*) from mergecluster.tasks where job_id = $job")

phases=$(psql "select round(extract(epoch from (select min(started_at) from mergecluster.tasks where job_id = $job) - submitted_at)::numeric, 2) || ' s to the first task, ' ||
  round(extract(epoch from finished_at - (select max(finished_at) from mergecluster.tasks where job_id = $job))::numeric, 2) || ' s from the last task to the end, tasks busy ' ||
  (select round(sum(extract(epoch from finished_at - started_at))::numeric, 2) from mergecluster.tasks where job_id = $job) || ' s in total'
  from mergecluster.jobs where id = $job")
client=$(psql "select 'client ' || round((extract(epoch from submitted_at) - $start)::numeric, 2) || ' s from start to submitted, ' ||
  round(($end - extract(epoch from finished_at))::numeric, 2) || ' s from the job end to its exit' from mergecluster.jobs where id = $job")
gaps=$(psql "select round(sum(gap)::numeric, 2) || ' s between a silo''s tasks in total, ' || round((1000 * avg(gap))::numeric) || ' ms on average' from (
  select extract(epoch from started_at - lag(finished_at) over (partition by silo order by started_at)) as gap
  from mergecluster.tasks where job_id = $job) g")
per_silo=$(psql "select string_agg(silo || ' ' || n || ' tasks at ' || rate || ' GB/s', ', ' order by silo) from (
  select silo, count(*) as n, round((sum(bytes) / sum(extract(epoch from finished_at - started_at)) / 1e9)::numeric, 2) as rate
  from mergecluster.tasks where job_id = $job group by silo) s")
same=no; [[ "$(sha256sum "$work/data/cluster.safetensors" | cut -d' ' -f1)" == "$local_sha" ]] && same=yes
awk -v b="$bytes" -v l="$local_s" -v c="$cluster_s" -v t="$tasks" -v tx="$((tx1 - tx0))" -v same="$same" -v n="${#files[@]}" -v phases="$phases" -v per_silo="$per_silo" -v client="$client" -v gaps="$gaps" -v lcpu="$local_cpu" -v scpu="$silo_cpu" -v hz="$(getconf CLK_TCK)" -v shape="${silos}x${silo_threads}" -v cold="$cold_s" 'BEGIN {
  printf "inputs:          %d files, %.2f GB\n", n, b / 1e9
  printf "local (2 thr):   %.2f s, %.2f GB/s\n", l, b / l / 1e9
  printf "cluster (%s):   %.2f s, %.2f GB/s, %d tasks\n", shape, c, b / c / 1e9, t
  printf "overhead:        %+.1f%% (the first run, on cold silos: %.2f s, %+.1f%%)\n", (c / l - 1) * 100, cold, (cold / l - 1) * 100
  printf "phases:          %s\n", phases
  printf "                 %s\n", client
  printf "                 %s\n", gaps
  printf "per silo:        %s (input bytes over busy time)\n", per_silo
  printf "cpu time:        local %.1f s, silos %.1f s (user + system, whole processes)\n", lcpu / hz, scpu / hz
  printf "ledger:          %d transactions during the job, %.1f per task (all silos and the client, heartbeats included)\n", tx, tx / t
  printf "bit-identical:   %s\n", same
}'
