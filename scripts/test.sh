#!/usr/bin/env bash
# The README's test command: installs what the tests need (PostgreSQL from Debian), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "test: installing PostgreSQL (apt-get)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi

# The CLI is built once up front so tests that run ./mergecluster as a process do not race to build it.
./mergecluster --help >/dev/null

dotnet test Cluster.sln -c Release --nologo -v q --logger "console;verbosity=normal" 2>&1 | tee .build/test.log | grep -vE '^\s*$'
status=${PIPESTATUS[0]}
passed=$(grep -oE 'Passed: +[0-9]+' .build/test.log | awk '{s+=$2} END {print s+0}')
failed=$(grep -oE 'Failed: +[0-9]+' .build/test.log | awk '{s+=$2} END {print s+0}')
skipped=$(grep -oE 'Skipped: +[0-9]+' .build/test.log | awk '{s+=$2} END {print s+0}')
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$status"
