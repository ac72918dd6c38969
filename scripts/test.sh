#!/usr/bin/env bash
# The README's test command: installs what the tests need (PostgreSQL from Debian), then runs every test.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "test: installing PostgreSQL (apt-get)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null || { echo "test: could not install PostgreSQL" >&2; exit 1; }
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

# One summary line over all test projects, in the "N passed, N failed" form CI reads.
count() { grep -oE "^ +$1: +[0-9]+" .build/test.log | awk '{s+=$2} END {print s+0}'; }
echo "tests: $(count Passed) passed, $(count Failed) failed, $(count Skipped) skipped"
exit "$status"
