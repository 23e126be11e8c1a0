#!/usr/bin/env bash
# Build the HACS repository tree in OUT (default build/hacs): HACS installs an integration only from
# `custom_components/<domain>/` at a repository's root, with `hacs.json` beside it
# (https://www.hacs.xyz/docs/publish/integration/), while this project keeps it under ha_integration/.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$REPO_ROOT/build/hacs}"
SRC="$REPO_ROOT/ha_integration"

rm -rf "$OUT"
mkdir -p "$OUT/custom_components"
cp -R "$SRC/custom_components/rkllm_mqtt" "$OUT/custom_components/"
find "$OUT" -name __pycache__ -type d -prune -exec rm -rf {} +
cp "$SRC/hacs.json" "$OUT/hacs.json"
cp "$SRC/README.md" "$OUT/README.md"
cp "$REPO_ROOT/LICENSE" "$OUT/LICENSE"
echo "HACS repository tree: $OUT"
