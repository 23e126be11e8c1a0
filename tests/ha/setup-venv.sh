#!/usr/bin/env bash
# Create (or refresh) the Home Assistant test tier venv at <repo>/.venv-ha.
#
# Why a separate venv: phacc 0.13.236 pins homeassistant 2025.4.4, the last HA that runs on
# Python 3.13.0/3.13.1 (the pyenv interpreter on this machine); the daemon's own venv stays on 3.11.
# Idempotent: an existing venv whose pins already match is left alone (a stamp file records them).
# Exit 3 (and one line on stderr) when no Python 3.13 exists, so the caller can skip the tier.
set -euo pipefail

PHACC_VERSION="0.13.236"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO_ROOT/.venv-ha"
STAMP="$VENV/.rkllm-ha-stamp"

find_python() {
    local candidate
    if command -v python3.13 >/dev/null 2>&1; then
        candidate="$(command -v python3.13)"
        # A pyenv shim exists even when no 3.13 is selected; make sure it really runs.
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    fi
    local roots=()
    if command -v pyenv >/dev/null 2>&1; then
        roots+=("$(pyenv root)")
    fi
    roots+=("$HOME/.pyenv")
    local root
    for root in "${roots[@]}"; do
        for candidate in "$root"/versions/3.13*/bin/python3.13; do
            if [[ -x "$candidate" ]]; then
                echo "$candidate"
                return 0
            fi
        done
    done
    return 1
}

if ! PYTHON="$(find_python)"; then
    echo "no Python 3.13 found (python3.13 on PATH, \$(pyenv root)/versions/3.13*, ~/.pyenv/versions/3.13*)" >&2
    exit 3
fi

# What the venv must contain; a change in any of these rebuilds the install.
WANT="python=$("$PYTHON" -c 'import sys; print(sys.version.split()[0])') phacc=$PHACC_VERSION pyproject=$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -c1-16)"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "HA venv up to date: $VENV ($WANT)"
    exit 0
fi

# pip repeats some warnings per package (e.g. a configured local index that does not exist);
# keep errors and the rest visible, drop those repeats.
quiet_pip() {
    "$VENV/bin/python" -m pip "$@" 2> >(grep -v -e "is ignored: it is neither a file nor a directory" \
        -e "BuildBackendWarning" >&2)
}

echo "Creating HA venv $VENV with $PYTHON ($WANT); this takes a few minutes the first time"
rm -f "$STAMP"
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
quiet_pip install --quiet --upgrade pip
# One resolver run for both, so a conflict between the daemon's deps and HA's pins is an error here
# (HA 2025.4.4 pins paho-mqtt 2.1.0 and pydantic 2.10.6; the daemon needs paho-mqtt>=2.1,<3).
quiet_pip install --quiet "pytest-homeassistant-custom-component==$PHACC_VERSION" -e "$REPO_ROOT"
quiet_pip check
echo "$WANT" > "$STAMP"
echo "HA venv ready: $VENV"
