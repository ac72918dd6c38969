#!/usr/bin/env bash
# Model-selection benchmark (issue #13): `distance` of N SD1.5 checkpoints next to `merge` of the same files and `cat`
# (GB/s and peak RSS), distance's peak RSS for 2, 4 ... N models (flat in N), and `sweep --leave-one-out unet` over
# the N models against N separate merges of the same candidates (which must also be byte-identical to the sweep's).
#
#   bench/selection.sh [--dir DIR] [--models N] [--scale S] [--threads T] [--keep]
#
# Defaults: 8 full-size SD1.5 models (2.1 GB of f16 each, `synth --arch sd15`) in /tmp/mergecluster-bench-selection.
# Peak disk use is about 2N+1 model sizes (the inputs plus the sweep's N candidates): 36 GB at full size; --scale
# shrinks every dimension (0.7 gives 0.85 GB files). Run it on a quiet machine: the load average is printed with the figures.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir=/tmp/mergecluster-bench-selection models=8 scale=1 threads=$(nproc) keep=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --scale) scale="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: bench/selection.sh [--dir DIR] [--models N] [--scale S] [--threads T] [--keep]" >&2; exit 2 ;;
  esac
done
mc="$root/mergecluster"
export MERGECLUSTER_CACHE="$dir/cache"
mkdir -p "$dir"
cd "$dir"
"$mc" --help >/dev/null

for ((s = 1; s <= models; s++)); do
  [[ -f "m$s.safetensors" ]] || "$mc" synth --arch sd15 --seed "$s" --scale "$scale" -o "m$s.safetensors" >/dev/null
done
files=(); for ((s = 1; s <= models; s++)); do files+=("m$s.safetensors"); done
bytes=$(stat -c %s "${files[@]}" | awk '{s+=$1} END {print s}')
size=$(stat -c %s m1.safetensors)
free=$(df --output=avail -B1 . | tail -1)
if (( free < size * (models + 2) )); then
  echo "bench: $dir has $free bytes free; the sweep needs about $((size * (models + 2)))" >&2; exit 1
fi

names=$(printf 'm%d, ' $(seq 1 "$models")); names="[${names%, }]"
{
  echo "models:"; for ((s = 1; s <= models; s++)); do echo "  m$s: m$s.safetensors"; done
  echo "components:"
  for c in unet te0 vae; do echo "  $c: { method: mean, models: $names }"; done
  echo "output: { path: mix.safetensors, dtype: f16 }"
} > mix.yaml

# seconds and peak RSS (KB) of one command
measure() { /usr/bin/time -f "%e %M" -o .time "$@" >/dev/null 2>.stderr || { cat .stderr >&2; exit 1; }; cat .time; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN {printf "%.2f GB/s", b / s / 1e9}'; }
line() { printf '%-34s %8.1f s  %-11s peak RSS %6d MB\n' "$1" "$2" "$(rate "$3" "$2")" "$(( $4 / 1024 ))"; }

echo "machine: $(nproc) cores, $(uptime | sed 's/.*load average/load average/')"
echo "inputs:  $models x $(awk -v b="$size" 'BEGIN {printf "%.2f GB", b / 1e9}') SD1.5 (scale $scale), $(awk -v b="$bytes" 'BEGIN {printf "%.1f GB", b / 1e9}') in all; threads $threads"
cat "${files[@]}" >/dev/null # the same page-cache state for everyone
read -r t m < <(measure cat "${files[@]}");                                       line "cat" "$t" "$bytes" "$m"
read -r t m < <(measure "$mc" merge mix.yaml --no-hash --threads "$threads");     line "merge (mean of $models)" "$t" "$bytes" "$m"; merge_t=$t
read -r t m < <(measure "$mc" distance "${files[@]}" --threads "$threads");       line "distance ($models models)" "$t" "$bytes" "$m"; distance_t=$t
awk -v d="$distance_t" -v m="$merge_t" 'BEGIN {printf "distance throughput: %.0f%% of merge (target >= 50%%)\n", 100 * m / d}'
for n in 2 4; do
  (( n < models )) || continue
  sub=("${files[@]:0:n}"); b=$(stat -c %s "${sub[@]}" | awk '{s+=$1} END {print s}')
  read -r t m < <(measure "$mc" distance "${sub[@]}" --threads "$threads");      line "distance ($n models)" "$t" "$b" "$m"
done

rm -rf sweep; mkdir sweep
read -r t m < <(measure "$mc" sweep mix.yaml --leave-one-out unet -o sweep --no-hash --threads "$threads")
line "sweep --leave-one-out ($models cand.)" "$t" "$bytes" "$m"; sweep_t=$t
total=0
for cand in sweep/*.safetensors; do
  python3 - "$cand" > cand.yaml <<'EOF'
import json, struct, sys
with open(sys.argv[1], 'rb') as f:
    n = struct.unpack('<Q', f.read(8))[0]
    print(json.loads(f.read(n))['__metadata__']['mergecluster.recipe'], end='')
EOF
  read -r t m < <(measure "$mc" merge cand.yaml -o one.safetensors --no-hash --threads "$threads")
  total=$(awk -v a="$total" -v b="$t" 'BEGIN {print a + b}')
  cmp -s one.safetensors "$cand" || { echo "bench: $cand differs from the merge of its own recipe" >&2; exit 1; }
  rm -f one.safetensors
done
printf '%-34s %8.1f s  (each candidate byte-identical to its sweep file)\n' "$models separate merges" "$total"
awk -v s="$sweep_t" -v m="$total" 'BEGIN {printf "sweep: %.1fx faster than separate merges\n", m / s}'
echo "after:   $(uptime | sed 's/.*load average/load average/')"
rm -rf sweep mix.safetensors cand.yaml .time .stderr
(( keep )) || rm -f m*.safetensors
