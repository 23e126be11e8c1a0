#!/usr/bin/env bash
# The Home Assistant tier: build/refresh .venv-ha, then run tests/ha in it.
# No Python 3.13 on this machine → the tier is skipped (exit 0) with the reason; `make test` calls this.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT" || exit 1

reason_file="$(mktemp)"
trap 'rm -f "$reason_file"' EXIT
bash tests/ha/setup-venv.sh 2>"$reason_file"
status=$?
if [[ $status -eq 3 ]]; then
    echo "HA tier skipped: $(tail -n 1 "$reason_file")"
    exit 0
fi
cat "$reason_file" >&2
if [[ $status -ne 0 ]]; then
    echo "HA tier: setting up .venv-ha failed (exit $status)" >&2
    exit "$status"
fi

.venv-ha/bin/pytest tests/ha -p no:cacheprovider "$@"
