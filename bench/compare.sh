#!/usr/bin/env bash
# The merge against its I/O bound and its peer (issue #15): an N-way mean of FILE... by `mergecluster merge`, by the
# tiled float64 PyTorch peer (bench/torch_merge.py, Debian's python3-torch), `cat` of the inputs to /dev/null, and a
# durable write of an output-sized file (dd conv=fdatasync, and with oflag=direct as the merge writes). Runs alternate, each after a `sync`; each figure is the
# median of --runs (3). Prints, for each: wall time, GB/s, user and sys time, peak RSS, page faults; then the
# targets: merge <= 1.25x the I/O bound (the larger of cat and the durable write), >= 3x the peer, sys < user.
#
#   bench/compare.sh [--runs R] [--dir DIR] [--threads T] [--cold] FILE FILE...
#
# --dir: where outputs go (default: compare-out beside the first FILE, so on the inputs' disk); it needs about three
# output sizes free. --cold adds a merge whose hash cache is emptied first (the AutoV2 hashing of every input, which
# a warm merge finds cached). The same file may be named more than once (or hard links of one), to reach a large N
# beyond the disk. The inputs are read once before the timed runs, so the figures are for a warm page cache if they
# fit in memory. The machine's load average is printed with the figures: run it on a quiet machine.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
runs=3 dir="" threads=$(nproc) cold=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --cold) cold=1; shift ;;
    -*) echo "usage: bench/compare.sh [--runs R] [--dir DIR] [--threads T] [--cold] FILE FILE..." >&2; exit 2 ;;
    *) break ;;
  esac
done
(($# >= 2)) || { echo "bench/compare.sh: give at least two .safetensors files" >&2; exit 2; }
files=()
for f in "$@"; do
  [[ -f "$f" ]] || { echo "bench/compare.sh: $f: not a file" >&2; exit 2; }
  files+=("$(realpath "$f")")
done
[[ -x /usr/bin/time ]] || { echo "bench/compare.sh: needs GNU time (apt-get install time)" >&2; exit 1; }
python=/usr/bin/python3
"$python" -c 'import torch' 2>/dev/null || { echo "bench/compare.sh: needs Debian's python3-torch (apt-get install python3-torch)" >&2; exit 1; }
dir="${dir:-$(dirname "${files[0]}")/compare-out}"
mkdir -p "$dir"
dir="$(realpath "$dir")"
mc="$root/mergecluster"
"$mc" --help >/dev/null
export MERGECLUSTER_CACHE="$dir/cache"

{
  echo "models:"
  for i in "${!files[@]}"; do printf '  m%d: "%s"\n' "$i" "${files[$i]}"; done
  printf 'components:\n  all: { method: mean, models: [%s] }\n' "$(seq -s ', ' -f 'm%g' 0 $((${#files[@]} - 1)))"
  printf 'output: { path: "%s", dtype: f16 }\n' "$dir/merge.safetensors"
} > "$dir/recipe.yaml"

in_bytes=$(stat -c %s "${files[@]}" | awk '{s+=$1} END {print s}')
echo "compare: ${#files[@]} inputs, $(awk -v b="$in_bytes" 'BEGIN {printf "%.2f", b / 1e9}') GB, $threads threads, outputs in $dir"
# One untimed merge: builds nothing later, fills the hash cache, reads the inputs into the page cache, gives the output size.
"$mc" merge "$dir/recipe.yaml" -j "$threads" >/dev/null
out_bytes=$(stat -c %s "$dir/merge.safetensors")
out_mib=$(((out_bytes + (1 << 20) - 1) >> 20))

tools=(merge torch cat write write-direct)
((cold)) && tools=(merge merge-cold torch cat write write-direct)
run_tool() {
  case "$1" in
    merge) "$mc" merge "$dir/recipe.yaml" -j "$threads" ;;
    merge-cold) rm -f "$MERGECLUSTER_CACHE/hashes.tsv"; "$mc" merge "$dir/recipe.yaml" -j "$threads" ;;
    torch) "$python" "$root/bench/torch_merge.py" "$dir/torch.safetensors" "${files[@]}" ;;
    cat) cat "${files[@]}" >/dev/null ;;
    write) dd if=/dev/zero of="$dir/write.bin" bs=1M count="$out_mib" conv=fdatasync status=none ;;
    write-direct) dd if=/dev/zero of="$dir/write.bin" bs=1M count="$out_mib" oflag=direct conv=fdatasync status=none ;;
  esac
}

# results/TOOL.RUN: wall user sys maxrss_kb major minor
results="$dir/results"
rm -rf "$results"
mkdir -p "$results"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= runs; r++)); do
  for tool in "${tools[@]}"; do
    # Only the tool's own output goes first (the merge's and the peer's last ones are compared at the end).
    case "$tool" in merge*) rm -f "$dir/merge.safetensors" ;; torch) rm -f "$dir/torch.safetensors" ;; write*) rm -f "$dir/write.bin" ;; esac
    sync
    /usr/bin/time -f '%e %U %S %M %F %R' -o "$results/$tool.$r" bash -c "$(declare -f run_tool); $(declare -p mc dir threads python root files out_mib MERGECLUSTER_CACHE); run_tool $tool" >/dev/null 2>"$results/$tool.$r.err" \
      || { echo "compare: $tool failed:" >&2; cat "$results/$tool.$r.err" >&2; exit 1; }
  done
  echo "compare: round $r of $runs done (load $(cut -d' ' -f1-3 /proc/loadavg))"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
same="no"
[[ -f "$dir/torch.safetensors" ]] || run_tool torch >/dev/null
[[ -f "$dir/merge.safetensors" ]] || run_tool merge >/dev/null
# The peer's header differs (key order, no metadata); compare the tensor bytes, which both lay out in key order.
"$python" - "$dir/merge.safetensors" "$dir/torch.safetensors" <<'EOF' && same="yes"
import json, struct, sys
def data(p):
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n)); h.pop("__metadata__", None)
        base = 8 + n
        out = []
        for k in sorted(h):
            b, e = h[k]["data_offsets"]; f.seek(base + b); out.append((k, f.read(e - b)))
        return out
sys.exit(0 if data(sys.argv[1]) == data(sys.argv[2]) else 1)
EOF
rm -f "$dir/write.bin" "$dir/torch.safetensors"

# The median run by wall time, per tool.
median() { for f in "$results/$1".[0-9]*; do [[ $f == *.err ]] || cat "$f"; done | sort -n -k1,1 | awk -v n="$runs" 'NR == int((n + 1) / 2)'; }
printf '\n%-11s %8s %8s %8s %8s %10s %8s %10s\n' tool "time s" "GB/s" "user s" "sys s" "peak RSS" "major" "minor"
declare -A wall user sys
for tool in "${tools[@]}"; do
  read -r w u s m maj min < <(median "$tool")
  wall[$tool]=$w user[$tool]=$u sys[$tool]=$s
  bytes=$in_bytes
  [[ $tool == write* ]] && bytes=$out_bytes
  printf '%-11s %8.2f %8.2f %8.2f %8.2f %7.0f MB %8d %10d\n' "$tool" "$w" "$(awk -v b="$bytes" -v t="$w" 'BEGIN {print b / 1e9 / t}')" "$u" "$s" "$(awk -v k="$m" 'BEGIN {print k / 1024}')" "$maj" "$min"
done
echo
echo "in: $(awk -v b="$in_bytes" 'BEGIN {printf "%.2f", b / 1e9}') GB, out: $(awk -v b="$out_bytes" 'BEGIN {printf "%.2f", b / 1e9}') GB; medians of $runs; load average before $load_before, after $load_after"
awk -v m="${wall[merge]}" -v c="${wall[cat]}" -v w="${wall[write]}" -v d="${wall[write-direct]}" -v t="${wall[torch]}" -v u="${user[merge]}" -v s="${sys[merge]}" 'BEGIN {
  bound = c > w ? c : w
  printf "merge / I/O bound (max of cat, write = %.2f s): %.2fx (target <= 1.25x: %s)\n", bound, m / bound, (m / bound <= 1.25) ? "met" : "not met"
  # The merge writes its output with O_DIRECT, so the faster durable write bounds it more tightly.
  direct = c > d ? c : d
  printf "merge / I/O bound with a direct write (max of cat, write-direct = %.2f s): %.2fx\n", direct, m / direct
  printf "peer / merge: %.2fx (target >= 3x: %s)\n", t / m, (t / m >= 3) ? "met" : "not met"
  printf "merge sys %.2f s vs user %.2f s (target sys < user: %s)\n", s, u, (s < u) ? "met" : "not met"
}'
if ((cold)); then
  awk -v m="${wall[merge]}" -v c="${wall[merge-cold]}" 'BEGIN { printf "cold / warm merge: %.2fx (target <= 1.15x: %s)\n", c / m, (c / m <= 1.15) ? "met" : "not met" }'
fi
echo "merge and peer tensors identical: $same"
