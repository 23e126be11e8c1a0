#!/usr/bin/env bash
# The Home Assistant tiers: tests/ha on the oldest release we support and on a current one.
#
#   run.sh [all|2025|2026] [pytest args...]
#
#   2025: HA 2025.4.4 (phacc 0.13.236) in .venv-ha, Python 3.13 from pyenv (tests/ha/setup-venv.sh)
#   2026: HA 2026.10.4 (phacc 0.13.375) in a cached Debian sid chroot, Python 3.14 (tests/ha/chroot-2026.sh)
#
# A tier that cannot run here is skipped with one line saying why (exit 0); a tier that runs and
# fails makes the whole run fail. `make test` calls this with `all`.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT" || exit 1

tiers="all"
if [[ $# -gt 0 && "$1" =~ ^(all|2025|2026)$ ]]; then
    tiers="$1"
    shift
fi

reason_file="$(mktemp)"
trap 'rm -f "$reason_file"' EXIT

# prepare NAME CMD...: run the tier's setup; 0 = ready, 3 = skipped (said why), else failed.
prepare() {
    local name="$1"
    shift
    "$@" 2>"$reason_file"
    local status=$?
    if [[ $status -eq 3 ]]; then
        echo "HA tier $name skipped: $(tail -n 1 "$reason_file")"
        return 3
    fi
    cat "$reason_file" >&2
    if [[ $status -ne 0 ]]; then
        echo "HA tier $name: setup failed (exit $status)" >&2
    fi
    return $status
}

failed=0
if [[ "$tiers" == all || "$tiers" == 2025 ]]; then
    prepare 2025 bash tests/ha/setup-venv.sh
    case $? in
        0)
            echo "HA tier 2025: Home Assistant 2025.4.4"
            .venv-ha/bin/pytest tests/ha -p no:cacheprovider "$@" || failed=1
            ;;
        3) ;;
        *) failed=1 ;;
    esac
fi
if [[ "$tiers" == all || "$tiers" == 2026 ]]; then
    prepare 2026 bash tests/ha/chroot-2026.sh build
    case $? in
        0)
            echo "HA tier 2026: Home Assistant 2026.10.4"
            bash tests/ha/chroot-2026.sh run /opt/ha/bin/pytest tests/ha -p no:cacheprovider "$@" || failed=1
            ;;
        3) ;;
        *) failed=1 ;;
    esac
fi
exit $failed
