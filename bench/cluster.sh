#!/usr/bin/env bash
# Cluster overhead benchmark: the same mean recipe merged locally with 2 threads and by 2 silos (1 thread each) on
# this machine, over a throwaway PostgreSQL ledger. Prints both times, the overhead, the ledger transactions per task,
# and checks that both outputs are bit-identical. The local merge is a fresh process, as users run it; so is each
# submit --wait client. The silos are long-running: their first job (cold: JIT) is reported apart, then local and
# cluster runs alternate --rounds times, so a noisy minute on a shared host hits both; best and median are compared.
#
#   bench/cluster.sh FILE FILE... [--group G] [--shard-mb N] [--silos N] [--silo-threads T] [--rounds R]
#
# PG_EXTRA adds server settings, e.g. PG_EXTRA="-c synchronous_commit=off" to see what the WAL flush costs per task.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mc="$root/mergecluster"
group=8 shard=256 silos=2 silo_threads=1 rounds=3 files=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --group) group=$2; shift 2 ;;
    --shard-mb) shard=$2; shift 2 ;;
    --silos) silos=$2; shift 2 ;;
    --silo-threads) silo_threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) files+=("$(realpath "$1")"); shift ;;
  esac
done
[[ ${#files[@]} -ge 2 ]] || { echo "usage: bench/cluster.sh FILE FILE... [--group G] [--shard-mb N] [--silos N] [--silo-threads T] [--rounds R]" >&2; exit 2; }

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
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f\n", b - a }'; }

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
cpu() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
self_cpu() { awk '{print $16 + $17}' /proc/$$/stat; }  # finished children of this shell

# The first job on fresh silos pays their JIT (thousands of methods compiled, then recompiled at tier 1 while the
# merge runs: seconds of CPU on 2 cores). It is reported as "cold" and not compared.
start=$(now)
"$mc" submit "$work/data/recipe.yaml" --wait --no-hash --shard-mb "$shard" > /dev/null 2>&1
cold_s=$(since "$start")
rm -f "$work/data/cluster.safetensors"

local_times=() cluster_times=() local_cpu=0 silo_cpu=0 tx=0 tasks=0 same=yes best_job="" best_s=""
for round in $(seq "$rounds"); do
  cat "${files[@]}" > /dev/null
  c0=$(self_cpu); start=$(now)
  "$mc" merge "$work/data/recipe.yaml" -o "$work/data/local.safetensors" --threads 2 --no-hash > /dev/null
  local_times+=("$(since "$start")"); local_cpu=$((local_cpu + $(self_cpu) - c0))
  # Keep only the local output's hash: its bytes in the page cache would push inputs out during the cluster run.
  local_sha=$(sha256sum "$work/data/local.safetensors" | cut -d' ' -f1)
  rm -f "$work/data/local.safetensors"

  cat "${files[@]}" > /dev/null
  tx0=$(psql "select xact_commit + xact_rollback from pg_stat_database where datname = 'postgres'")
  s0=$(cpu "${pids[@]}"); c0=$(self_cpu)
  start=$(now)
  job=$("$mc" submit "$work/data/recipe.yaml" --wait --no-hash --shard-mb "$shard" 2> "$work/submit.log")
  took=$(since "$start"); end=$(now)
  cluster_times+=("$took")
  silo_cpu=$((silo_cpu + $(cpu "${pids[@]}") - s0 + $(self_cpu) - c0))  # the client's CPU counts too
  tx=$((tx + $(psql "select xact_commit + xact_rollback from pg_stat_database where datname = 'postgres'") - tx0))
  tasks=$((tasks + $(psql "select count(*) from mergecluster.tasks where job_id = $job")))
  [[ "$(sha256sum "$work/data/cluster.safetensors" | cut -d' ' -f1)" == "$local_sha" ]] || same=no
  rm -f "$work/data/cluster.safetensors"
  if [[ -z "$best_s" ]] || awk -v a="$took" -v b="$best_s" 'BEGIN { exit !(a < b) }'; then
    best_s=$took best_job=$job best_start=$start best_end=$end
  fi
done
job=$best_job start=$best_start end=$best_end
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
stats() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%s %s\n", v[1], (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
read -r local_best local_median < <(stats "${local_times[@]}")
read -r cluster_best cluster_median < <(stats "${cluster_times[@]}")
awk -v b="$bytes" -v lb="$local_best" -v lm="$local_median" -v cb="$cluster_best" -v cm="$cluster_median" -v r="$rounds" \
    -v t="$tasks" -v tx="$tx" -v same="$same" -v n="${#files[@]}" -v phases="$phases" -v per_silo="$per_silo" -v client="$client" \
    -v gaps="$gaps" -v lcpu="$local_cpu" -v scpu="$silo_cpu" -v hz="$(getconf CLK_TCK)" -v shape="${silos}x${silo_threads}" \
    -v cold="$cold_s" -v lt="${local_times[*]}" -v ct="${cluster_times[*]}" 'BEGIN {
  printf "inputs:          %d files, %.2f GB; %d rounds, local and cluster alternating\n", n, b / 1e9, r
  printf "local (2 thr):   best %.2f s (%.2f GB/s), median %.2f s   [%s]\n", lb, b / lb / 1e9, lm, lt
  printf "cluster (%s):   best %.2f s (%.2f GB/s), median %.2f s   [%s], %d tasks each\n", shape, cb, b / cb / 1e9, cm, ct, t / r
  printf "overhead:        %+.1f%% best to best, %+.1f%% median to median (cold silos, first job: %.2f s, %+.1f%%)\n", (cb / lb - 1) * 100, (cm / lm - 1) * 100, cold, (cold / lm - 1) * 100
  printf "best cluster run: %s\n", phases
  printf "                 %s\n", client
  printf "                 %s\n", gaps
  printf "per silo:        %s (input bytes over busy time)\n", per_silo
  printf "cpu time:        local %.1f s, silos and client %.1f s per run (user + system, whole processes)\n", lcpu / hz / r, scpu / hz / r
  printf "ledger:          %.1f transactions per task (all silos and the client, heartbeats included)\n", tx / t
  printf "bit-identical:   %s\n", same
}'
