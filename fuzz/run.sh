#!/usr/bin/env bash
# Fuzzes the parsers a downloaded checkpoint reaches (the safetensors header, the recipe in its metadata) with afl++
# and SharpFuzz: fuzz/run.sh SECONDS [TARGET...] runs each target (default: all) for SECONDS, then prints its
# executions, crashes and hangs. Installs afl++ from Debian if it is missing. Findings are under fuzz/.build/findings/;
# a crashing or hanging input belongs in fuzz/regressions/TARGET/, which the test suite runs.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:?usage: fuzz/run.sh SECONDS [header|recipe|mecha ...]}
shift
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(header recipe mecha)

if ! command -v afl-fuzz >/dev/null; then
  echo "fuzz: installing afl++ (apt-get)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq afl++ >/dev/null
fi
tools=.build/tools
app=.build/app
if [[ ! -x $tools/sharpfuzz ]]; then
  dotnet tool install SharpFuzz.CommandLine --version 2.3.0 --tool-path "$tools" >/dev/null
fi

# A fresh publish every time: SharpFuzz instruments assemblies in place, and only once.
rm -rf "$app"
dotnet publish MergeCluster.Fuzz/MergeCluster.Fuzz.csproj -c Release -o "$app" --nologo -v q >/dev/null
for dll in MergeCluster.Safetensors.dll MergeCluster.Merge.dll YamlDotNet.dll; do
  "$tools/sharpfuzz" "$app/$dll" >/dev/null
done

status=0
for target in "${targets[@]}"; do
  findings=.build/findings/$target
  rm -rf "$findings"
  mkdir -p "$findings"
  # The target is dotnet, which afl++ cannot see instrumented; SharpFuzz reports coverage through afl's shared memory.
  AFL_SKIP_BIN_CHECK=1 AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 \
    afl-fuzz -i "corpus/$target" -o "$findings" -t 5000 -m none -V "$seconds" -- dotnet "$app/MergeCluster.Fuzz.dll" "$target" \
    >"$findings.log" 2>&1 || { echo "fuzz $target: afl-fuzz failed (see fuzz/$findings.log)" >&2; tail -20 "$findings.log" >&2; status=1; continue; }
  stats=$findings/default/fuzzer_stats
  execs=$(awk -F: '/^execs_done/ {gsub(/ /, "", $2); print $2}' "$stats")
  rate=$(awk -F: '/^execs_per_sec/ {gsub(/ /, "", $2); print $2}' "$stats")
  crashes=$(find "$findings/default/crashes" -type f -name 'id:*' | wc -l)
  hangs=$(find "$findings/default/hangs" -type f -name 'id:*' | wc -l)
  echo "fuzz $target: $execs executions in ${seconds} s ($rate/s), $crashes crashes, $hangs hangs"
  [[ $crashes -eq 0 && $hangs -eq 0 ]] || status=1
done
exit $status
