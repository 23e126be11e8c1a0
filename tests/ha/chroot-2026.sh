#!/usr/bin/env bash
# The Home Assistant 2026 tier's interpreter: a Debian sid chroot with Python 3.14 and phacc.
#
#   chroot-2026.sh build          make sure the cached chroot exists and matches its inputs
#   chroot-2026.sh run CMD...     run CMD inside it, in the checkout (mounted at /src)
#
# Why a chroot: Home Assistant 2026.3+ needs Python >= 3.14.2, which this Debian release does not
# ship; Debian's sid suite does, as binary packages, and a minbase chroot of it is cheap.
# The chroot is cached outside the checkout ($RKLLM_HA_CACHE, else /var/cache/rkllm-mqtt-ci) under a
# name made of its inputs (this script and the daemon's dependencies in pyproject.toml), so CI and
# every checkout on the same machine reuse it, and a change to either builds a new one. A chroot no
# run used for two days is removed when another is built.
# Mounts are made in a private mount namespace (unshare), so they vanish with the command, whatever
# way it ends. Exit 3 with one line on stderr when the tier cannot run here (not root, no mount
# namespaces, no debootstrap, no Debian archive reachable), so the caller can skip it and say why.
set -euo pipefail

PHACC_VERSION="0.13.375"  # pins homeassistant 2026.10.4
# phacc does not install the requirements of the components the tests load; these are the ones the
# conversation and mqtt manifests (homeassistant/components/*/manifest.json) of 2026.10.4 declare.
COMPONENT_REQUIREMENTS=(gazetteer-matcher==1.1.0 hassil==3.12.1 home-assistant-intents==2026.10.6 paho-mqtt==2.1.0)
APT_PACKAGES=(mosquitto gcc libc6-dev)
SUITE="sid"
# The archive can serve a sid snapshot whose Release file is past its Valid-Until date.
APT_OPTIONS=(-o Acquire::Check-Valid-Until=false -o Acquire::Retries=3)

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE_ROOT="${RKLLM_HA_CACHE:-/var/cache/rkllm-mqtt-ci}"
KEY="$({ cat "${BASH_SOURCE[0]}"; sed -n '/^dependencies = \[/,/^\]/p' "$REPO_ROOT/pyproject.toml"; } \
    | sha256sum | cut -c1-16)"
ROOT="$CACHE_ROOT/ha2026-$KEY"
STAMP="$ROOT/.rkllm-ready"
LAST_USED="$ROOT/.rkllm-last-used"

skip() {
    echo "$*" >&2
    exit 3
}

# Everything inside runs with a clean environment: the host's pip settings name paths that do not
# exist in the chroot.
in_chroot() {
    chroot "$ROOT" /usr/bin/env -i PATH=/opt/ha/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}

# mount_and_run ROOT CMD...: run CMD (a host command) after mounting /proc, /dev and the checkout.
mount_and_run() {
    unshare --mount --propagation private -- bash -c '
        set -e
        root=$1; repo=$2; shift 2
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mkdir -p "$root/src"
        mount --bind "$repo" "$root/src"
        # The host resolver, and its CA bundle (this network may sit behind a TLS-inspecting proxy).
        cp -L /etc/resolv.conf "$root/etc/resolv.conf"
        if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
            cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
        fi
        exec "$@"
    ' mount_and_run "$ROOT" "$REPO_ROOT" "$@"
}

build() {
    if [[ -f "$STAMP" ]]; then
        return 0  # built by another process while this one waited for the lock
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || skip "no debootstrap and no apt-get to install it"
        echo "installing debootstrap (apt-get)" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } \
            >/dev/null 2>&1 || skip "no debootstrap, and apt-get could not install it"
    fi
    mkdir -p "$CACHE_ROOT"
    local tmp="$ROOT.building"
    rm -rf "$tmp"
    echo "Building the HA 2026 chroot $ROOT (Debian $SUITE, Python 3.14, phacc $PHACC_VERSION); about 2 min" >&2
    if ! debootstrap --variant=minbase --include=python3.14,python3.14-venv,ca-certificates \
            "$SUITE" "$tmp" >"$CACHE_ROOT/debootstrap.log" 2>&1; then
        rm -rf "$tmp"
        skip "debootstrap of Debian $SUITE failed (no archive reachable?): $(tail -n 1 "$CACHE_ROOT/debootstrap.log")"
    fi
    ROOT="$tmp" mount_and_run bash -c "$(declare -f in_chroot); ROOT='$tmp'; set -e
        in_chroot apt-get ${APT_OPTIONS[*]} update -qq
        in_chroot apt-get ${APT_OPTIONS[*]} install -y -qq --no-install-recommends ${APT_PACKAGES[*]} >/dev/null
        in_chroot python3.14 -m venv /opt/ha
        in_chroot /opt/ha/bin/pip install --quiet --upgrade pip
        deps=\$(in_chroot /opt/ha/bin/python -c 'import tomllib; print(\" \".join(tomllib.load(open(\"/src/pyproject.toml\", \"rb\"))[\"project\"][\"dependencies\"]))')
        # One resolver run, so a conflict between HA's pins and the daemon's needs fails here.
        in_chroot /opt/ha/bin/pip install --quiet pytest-homeassistant-custom-component==$PHACC_VERSION \
            ${COMPONENT_REQUIREMENTS[*]} \$deps
        in_chroot /opt/ha/bin/pip check
    "
    touch "$tmp/.rkllm-ready" "$tmp/.rkllm-last-used"
    mv "$tmp" "$ROOT"
    # Chroots of other inputs that no run used for two days (runs hold the lock shared, so none is
    # in use now).
    local old
    for old in "$CACHE_ROOT"/ha2026-*; do
        if [[ "$old" != "$ROOT" && -d "$old" ]] \
                && ! find "$old" -maxdepth 1 -name '.rkllm-*' -mtime -2 2>/dev/null | grep -q .; then
            rm -rf "$old"
        fi
    done
    echo "HA 2026 chroot ready: $ROOT" >&2
}

# ensure: the chroot exists (built now if need be) and is held with a shared lock (fd 9) until this
# process ends, so no build elsewhere removes it meanwhile; one build at a time on this machine.
ensure() {
    [[ "$(id -u)" == 0 ]] || skip "the HA 2026 tier needs root (debootstrap, chroot, mounts)"
    unshare --mount --propagation private true 2>/dev/null \
        || skip "the HA 2026 tier needs mount namespaces (unshare --mount failed)"
    mkdir -p "$(dirname "$CACHE_ROOT")"
    exec 9>>"${CACHE_ROOT%/}.lock"
    flock -s 9
    if [[ ! -f "$STAMP" ]]; then
        flock -u 9
        flock 9
        build
        flock -s 9
    fi
    touch "$LAST_USED"
}

case "${1:-}" in
    build)
        ensure
        ;;
    run)
        shift
        ensure
        # The checkout is importable as /src (the daemon runs from it too, with `python -m rkllm_mqtt`).
        mount_and_run bash -c "$(declare -f in_chroot); ROOT='$ROOT'; in_chroot /usr/bin/env PYTHONPATH=/src \
            PYTHONDONTWRITEBYTECODE=1 sh -c 'cd /src && exec \"\$0\" \"\$@\"' \"\$@\"" bash "$@"
        ;;
    *)
        echo "usage: $0 build | run CMD..." >&2
        exit 2
        ;;
esac
