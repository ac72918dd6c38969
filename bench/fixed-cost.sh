#!/usr/bin/env bash
# The embedded merge's fixed cost (issue #11, item 5: under 0.5 s): the wall time of `./mergecluster merge` on two
# tiny SD1.5-shaped checkpoints (1,131 tensors, 265 kB each), where the arithmetic and I/O are negligible and what is
# left is process start, the runtime, the CLI, reading the recipe and headers, planning, the hash cache, and the
# commit (fsync, rename). `--version` and `inspect` are timed for reference. Prints min, median and max of --runs.
#
#   bench/fixed-cost.sh [--runs R] [--dir DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
runs=15 dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    *) echo "usage: bench/fixed-cost.sh [--runs R] [--dir DIR]" >&2; exit 2 ;;
  esac
done
[[ -x /usr/bin/time ]] || { echo "bench/fixed-cost.sh: needs GNU time (apt-get install time)" >&2; exit 1; }
dir="${dir:-$(mktemp -d /var/tmp/mc-fixed-cost.XXXXXX)}"
mkdir -p "$dir"
mc="$root/mergecluster"
"$mc" --version >/dev/null   # builds the CLI if needed, untimed
export MERGECLUSTER_CACHE="$dir/cache"
for s in 1 2; do "$mc" synth --arch sd15 --seed "$s" --scale 0.01 -o "$dir/m$s.safetensors" >/dev/null; done
printf 'models:\n  a: m1.safetensors\n  b: m2.safetensors\ncomponents:\n  all: { method: mean, models: [a, b] }\noutput: out.safetensors\n' > "$dir/recipe.yaml"
"$mc" merge "$dir/recipe.yaml" >/dev/null   # fills the hash cache, as any later run of a recipe finds it

declare -A cmd=(
  [merge]="$mc merge $dir/recipe.yaml"
  [version]="$mc --version"
  [inspect]="$mc inspect $dir/m1.safetensors"
)
printf '%-8s %8s %8s %8s %8s %8s   (%s runs, load %s)\n' what "min s" "median s" "max s" "user s" "sys s" "$runs" "$(cut -d' ' -f1-3 /proc/loadavg)"
for what in merge version inspect; do
  : > "$dir/$what.times"
  for ((r = 0; r < runs; r++)); do
    /usr/bin/time -f '%e %U %S' -a -o "$dir/$what.times" ${cmd[$what]} >/dev/null 2>&1
  done
  sort -n -k1,1 "$dir/$what.times" | awk -v what="$what" '{ w[NR] = $1; u[NR] = $2; s[NR] = $3 }
    END { m = int((NR + 1) / 2); printf "%-8s %8.2f %8.2f %8.2f %8.2f %8.2f\n", what, w[1], w[m], w[NR], u[m], s[m] }'
done
awk -v runs="$runs" '{ if ($1 >= 0.5) over++ } END { printf "merge runs at or over 0.5 s: %d of %d (target: under 0.5 s)\n", over, runs }' "$dir/merge.times"
