#!/usr/bin/env bash
# Silo start-up benchmark: the time from starting `mergecluster silo` to its "is ready" line (joined the cluster),
# without an HTTP port, with --http-port, and with --http-port --dashboard, over a throwaway Azurite. Each start is a
# fresh process (as a pod is) on a fresh cluster id; the variants alternate --rounds times, so a noisy minute on a
# shared host hits all of them; best and median are printed. --cli DLL times another build's mergecluster.dll
# beside this one (e.g. a copy of .build/cli from main) for the variant without HTTP.
#
#   bench/silo-start.sh [--rounds R] [--cli OTHER/mergecluster.dll]
#
# Azurite comes from $MERGECLUSTER_AZURITE or .build/azurite (scripts/test.sh installs it there).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds=5 other=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --cli) other=$(realpath "$2"); shift 2 ;;
    *) echo "usage: bench/silo-start.sh [--rounds R] [--cli OTHER/mergecluster.dll]" >&2; exit 2 ;;
  esac
done
"$root/mergecluster" --help > /dev/null  # build the CLI now, not inside a timed run
cli="$root/.build/cli/mergecluster.dll"
work=$(mktemp -d /var/tmp/mc-silo-start.XXXXXX)
source "$root/bench/azurite.sh"
mkdir -p "$work/data"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

# One start: seconds from launch to the ready line; the silo then drains (SIGTERM) and exits before the next start.
start() {
  local dll=$1; shift
  local log began ended
  log=$(mktemp "$work/silo.XXXXXX.log")
  began=$(date +%s.%N)
  MERGECLUSTER_CLUSTER_ID="b$RANDOM$RANDOM" dotnet "$dll" silo --name bench --threads 1 --data-root "$work/data" --advertised-ip 127.0.0.1 \
    --silo-port "$(free_port)" --gateway-port "$(free_port)" "$@" > "$log" 2>&1 &
  local pid=$!
  until grep -q "is ready" "$log"; do
    kill -0 "$pid" 2>/dev/null || { echo "bench: the silo exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.01
  done
  ended=$(date +%s.%N)
  kill -TERM "$pid"; wait "$pid" || true
  echo "$began $ended" | awk '{printf "%.3f\n", $2 - $1}'
}

declare -A times
variants=("no-http" "http" "http+dashboard")
[[ -n "$other" ]] && variants=("other:no-http" "${variants[@]}")
start "$cli" > /dev/null  # one unmeasured start: the page cache holds the runtime and the app afterwards
for r in $(seq "$rounds"); do
  for v in "${variants[@]}"; do
    case "$v" in
      other:no-http) t=$(start "$other") ;;
      no-http) t=$(start "$cli") ;;
      http) t=$(start "$cli" --http-port "$(free_port)") ;;
      http+dashboard) t=$(start "$cli" --http-port "$(free_port)" --dashboard) ;;
    esac
    times[$v]+="$t "
    echo "round $r $v: ${t} s"
  done
done
echo "silo start to ready, $rounds rounds (load average: $(cut -d' ' -f1-3 /proc/loadavg)):"
for v in "${variants[@]}"; do
  echo "${times[$v]}" | tr ' ' '\n' | grep . | sort -n | awk -v v="$v" '{a[NR]=$1} END {printf "  %-16s best %.3f s  median %.3f s\n", v, a[1], (NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
done
