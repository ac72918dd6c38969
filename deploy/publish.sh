#!/usr/bin/env bash
# Publishes the CLI as the container image ships it: self-contained (no .NET install in the image), ReadyToRun (the
# merge kernels start precompiled), no symbols. The Dockerfile runs exactly this, and so do the deploy tests, which
# then run the result as a non-root user on a read-only root; keep every publish flag here.
# usage: deploy/publish.sh OUT_DIR [RID]   (RID defaults to this machine's, e.g. linux-x64 or linux-arm64)
set -euo pipefail
out="${1:?usage: deploy/publish.sh OUT_DIR [RID]}"
rid="${2:-$(dotnet --info 2>/dev/null | awk '/^ *RID:/ {print $2; exit}')}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Intermediate files go beside the output, not into src/*/obj, so this never races the ./mergecluster build.
dotnet publish "$root/src/MergeCluster.Cli/MergeCluster.Cli.csproj" \
  -c Release -r "$rid" --self-contained true \
  -p:PublishReadyToRun=true -p:DebugType=none -p:GenerateDocumentationFile=false \
  --artifacts-path "${MERGECLUSTER_PUBLISH_ARTIFACTS:-$out.artifacts}" \
  -o "$out" --nologo -v q
