#!/bin/sh
# Install (or uninstall) rkllm-mqtt as a system service: a virtualenv with the package, the `rkllm`
# system user in the group that owns the NPU device nodes, the udev rule, the systemd unit, and
# /etc/rkllm-mqtt/config.toml from the example (never overwritten).
#
#   sudo ./scripts/install.sh              install from this checkout (pip install .)
#   sudo WHEEL=dist/rkllm_mqtt-X-cp311-abi3-linux_aarch64.whl ./scripts/install.sh    from a wheel
#   sudo ./scripts/install.sh uninstall    remove what install added; keeps the config
#
# Needs only POSIX sh, python3 with venv (Debian/Ubuntu/Armbian: apt install python3-venv),
# useradd/groupadd; with gcc the token callback is built in C (else the Python one runs). Idempotent: a second run changes nothing and says so. One line per step.
# Every path can be overridden, so tests install into a temporary root:
#   DESTDIR   prefix for every file and for useradd/groupadd --root (default: empty, the system)
#   PREFIX    /opt/rkllm-mqtt      (the venv is $PREFIX/venv)
#   SYSCONFDIR /etc/rkllm-mqtt     UNITDIR /etc/systemd/system    UDEVDIR /etc/udev/rules.d
#   BINDIR    /usr/local/bin       (a rkllm-mqtt link into the venv)
#   SERVICE_USER rkllm  NPU_GROUP render   SYSTEMD yes|no (no: containers and tests)
#   PYTHON    python3   PIP_ARGS (extra pip arguments)   REINSTALL=yes (reinstall the same version)
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/rkllm-mqtt}
SYSCONFDIR=${SYSCONFDIR:-/etc/rkllm-mqtt}
UNITDIR=${UNITDIR:-/etc/systemd/system}
UDEVDIR=${UDEVDIR:-/etc/udev/rules.d}
BINDIR=${BINDIR:-/usr/local/bin}
SERVICE_USER=${SERVICE_USER:-rkllm}
NPU_GROUP=${NPU_GROUP:-render}
SYSTEMD=${SYSTEMD:-yes}
PYTHON=${PYTHON:-python3}
PIP_ARGS=${PIP_ARGS:-}
REINSTALL=${REINSTALL:-no}
WHEEL=${WHEEL:-}

VENV=$PREFIX/venv
RECORD=$DESTDIR$PREFIX/installed-by-rkllm-mqtt
CHANGED=0

say() { echo "$*"; }
changed() { CHANGED=$((CHANGED + 1)); say "$*"; }
die() { echo "install.sh: $*" >&2; exit 1; }
root_args() { [ -n "$DESTDIR" ] && echo "--root $DESTDIR" || true; }
has_user() { grep -q "^$1:" "$DESTDIR/etc/passwd" 2>/dev/null; }
has_group() { grep -q "^$1:" "$DESTDIR/etc/group" 2>/dev/null; }
in_group() { grep "^$1:" "$DESTDIR/etc/group" 2>/dev/null | cut -d: -f4 | tr ',' '\n' | grep -qx "$2"; }
record() { grep -qx "$1" "$RECORD" 2>/dev/null || echo "$1" >>"$RECORD"; }
recorded() { grep -qx "$1" "$RECORD" 2>/dev/null; }

# Install $1 (a file) as $DESTDIR$2 with mode $3 unless it is already identical; $4 names the step.
put() {
    if [ -f "$DESTDIR$2" ] && cmp -s "$1" "$DESTDIR$2"; then
        say "$4: $2 unchanged"
    else
        install -D -m "$3" "$1" "$DESTDIR$2"
        changed "$4: installed $2"
    fi
}

# The groups that own the NPU device nodes now (before the udev rule), besides $NPU_GROUP.
node_groups() {
    for node in "$DESTDIR/dev/rknpu" "$DESTDIR"/dev/dri/renderD*; do
        [ -e "$node" ] || continue
        group=$(stat -c %G "$node")
        [ "$group" = root ] || [ "$group" = UNKNOWN ] || echo "$group"
    done | sort -u
}

unit_text() {
    sed -e "s|/opt/rkllm-mqtt/venv|$VENV|g" -e "s|/etc/rkllm-mqtt|$SYSCONFDIR|g" \
        -e "s|^User=rkllm|User=$SERVICE_USER|" -e "s|^Group=rkllm|Group=$SERVICE_USER|" \
        -e "s|^SupplementaryGroups=render|SupplementaryGroups=$NPU_GROUP|" "$SRC/systemd/rkllm-mqtt.service"
}

source_version() {
    if [ -n "$WHEEL" ]; then
        basename "$WHEEL" | cut -d- -f2
    else
        sed -n 's/^__version__ = "\(.*\)"/\1/p' "$SRC/rkllm_mqtt/__init__.py"
    fi
}

do_install() {
    [ -n "$DESTDIR" ] || [ "$(id -u)" = 0 ] || die "run as root (sudo), or set DESTDIR"
    "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die "$PYTHON >= 3.11 with venv is needed: sudo apt install python3-venv"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT INT TERM
    mkdir -p "$DESTDIR$PREFIX"

    # 1. The group of the NPU nodes and the service user.
    if has_group "$NPU_GROUP"; then
        say "group: $NPU_GROUP exists"
    else
        # shellcheck disable=SC2046
        groupadd $(root_args) --system "$NPU_GROUP"
        record "group $NPU_GROUP"
        changed "group: created system group $NPU_GROUP"
    fi
    groups=$NPU_GROUP
    for g in $(node_groups); do [ "$g" = "$NPU_GROUP" ] || groups="$groups,$g"; done
    if has_user "$SERVICE_USER"; then
        missing=""
        for g in $(echo "$groups" | tr ',' ' '); do in_group "$g" "$SERVICE_USER" || missing="$missing $g"; done
        if [ -z "$missing" ]; then
            say "user: $SERVICE_USER exists, in $groups"
        else
            for g in $missing; do
                # shellcheck disable=SC2046
                usermod $(root_args) -a -G "$g" "$SERVICE_USER"
            done
            changed "user: added $SERVICE_USER to$missing"
        fi
    else
        # shellcheck disable=SC2046
        useradd $(root_args) --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --groups "$groups" "$SERVICE_USER"
        record "user $SERVICE_USER"
        changed "user: created system user $SERVICE_USER (groups: $groups)"
    fi

    # 2. The virtualenv with the package.
    version=$(source_version)
    py=$DESTDIR$VENV/bin/python
    if [ ! -x "$py" ]; then
        "$PYTHON" -m venv "$DESTDIR$VENV"
        record "venv"
        changed "venv: created $VENV"
    else
        say "venv: $VENV exists"
    fi
    installed=$("$py" -I -c 'import importlib.metadata as m; print(m.version("rkllm-mqtt"))' 2>/dev/null || true)
    if [ "$installed" = "$version" ] && [ "$REINSTALL" != yes ]; then
        say "package: rkllm-mqtt $version already installed (REINSTALL=yes to reinstall)"
    else
        force=""
        [ -z "$installed" ] || [ "$REINSTALL" != yes ] || force="--force-reinstall --no-deps"
        # shellcheck disable=SC2086
        "$py" -m pip install --quiet --disable-pip-version-check $PIP_ARGS $force \
            "${WHEEL:-$SRC}" >"$tmp/pip.log" 2>&1 || { cat "$tmp/pip.log" >&2; die "pip install failed"; }
        changed "package: installed rkllm-mqtt $version into $VENV"
    fi
    if "$py" -I -c 'import sys; from rkllm_mqtt.runtime.handoff import native_library; sys.exit(native_library() is None)' 2>/dev/null; then
        say "callback: the token hand-off in C is built"
    else
        say "callback: Python only (no C compiler when the package was built: apt install gcc, then REINSTALL=yes)"
    fi
    if [ "$(readlink "$DESTDIR$BINDIR/rkllm-mqtt" 2>/dev/null)" = "$VENV/bin/rkllm-mqtt" ]; then
        say "command: $BINDIR/rkllm-mqtt unchanged"
    else
        mkdir -p "$DESTDIR$BINDIR"
        ln -sfn "$VENV/bin/rkllm-mqtt" "$DESTDIR$BINDIR/rkllm-mqtt"
        changed "command: linked $BINDIR/rkllm-mqtt -> $VENV/bin/rkllm-mqtt"
    fi

    # 3. The configuration: readable by the service user only, never overwritten.
    conf=$DESTDIR$SYSCONFDIR/config.toml
    if [ -e "$conf" ]; then
        say "config: $SYSCONFDIR/config.toml exists (kept)"
    else
        install -d -m 0750 "$DESTDIR$SYSCONFDIR"
        install -m 0640 "$SRC/config/rkllm-mqtt.example.toml" "$conf"
        chgrp "$(grep "^$SERVICE_USER:" "$DESTDIR/etc/passwd" | cut -d: -f4)" "$DESTDIR$SYSCONFDIR" "$conf"
        changed "config: installed $SYSCONFDIR/config.toml from the example (edit runtime.library, runtime.model, mqtt)"
    fi

    # 4. The udev rule and the unit.
    sed "s/GROUP=\"render\"/GROUP=\"$NPU_GROUP\"/" "$SRC/systemd/99-rknpu.rules" >"$tmp/rules"
    cmp -s "$tmp/rules" "$DESTDIR$UDEVDIR/99-rknpu.rules" 2>/dev/null && rules_same=yes || rules_same=no
    put "$tmp/rules" "$UDEVDIR/99-rknpu.rules" 0644 "udev"
    if [ "$rules_same" = no ] && [ -z "$DESTDIR" ] && command -v udevadm >/dev/null 2>&1 && [ -d /run/udev ]; then
        udevadm control --reload && udevadm trigger && say "udev: rules reloaded, devices re-triggered"
    fi
    unit_text >"$tmp/unit"
    cmp -s "$tmp/unit" "$DESTDIR$UNITDIR/rkllm-mqtt.service" 2>/dev/null && unit_same=yes || unit_same=no
    put "$tmp/unit" "$UNITDIR/rkllm-mqtt.service" 0644 "unit"
    if [ "$SYSTEMD" = yes ]; then
        [ "$unit_same" = yes ] || { systemctl daemon-reload && say "systemd: daemon-reload"; }
        if systemctl is-enabled --quiet rkllm-mqtt 2>/dev/null; then
            say "systemd: rkllm-mqtt enabled"
        else
            systemctl enable --quiet rkllm-mqtt
            changed "systemd: enabled rkllm-mqtt (start it once the config is edited: sudo systemctl start rkllm-mqtt)"
        fi
    else
        say "systemd: skipped (SYSTEMD=no)"
    fi

    if [ "$CHANGED" = 0 ]; then
        say "done: nothing changed"
    else
        say "done: $CHANGED changes; next: edit $SYSCONFDIR/config.toml, then rkllm-mqtt check --config $SYSCONFDIR/config.toml"
    fi
}

do_uninstall() {
    [ -n "$DESTDIR" ] || [ "$(id -u)" = 0 ] || die "run as root (sudo), or set DESTDIR"
    unit=$DESTDIR$UNITDIR/rkllm-mqtt.service
    if [ -f "$unit" ]; then
        if [ "$SYSTEMD" = yes ]; then
            systemctl disable --now --quiet rkllm-mqtt 2>/dev/null || true
        fi
        rm -f "$unit"
        [ "$SYSTEMD" = yes ] && systemctl daemon-reload
        changed "unit: removed $UNITDIR/rkllm-mqtt.service"
    fi
    if [ -f "$DESTDIR$UDEVDIR/99-rknpu.rules" ]; then
        rm -f "$DESTDIR$UDEVDIR/99-rknpu.rules"
        changed "udev: removed $UDEVDIR/99-rknpu.rules"
    fi
    if [ -L "$DESTDIR$BINDIR/rkllm-mqtt" ]; then
        rm -f "$DESTDIR$BINDIR/rkllm-mqtt"
        changed "command: removed $BINDIR/rkllm-mqtt"
    fi
    if recorded "user $SERVICE_USER" && has_user "$SERVICE_USER"; then
        # shellcheck disable=SC2046
        userdel $(root_args) "$SERVICE_USER"
        changed "user: removed $SERVICE_USER"
    fi
    if recorded "group $NPU_GROUP" && has_group "$NPU_GROUP"; then
        # shellcheck disable=SC2046
        groupdel $(root_args) "$NPU_GROUP" 2>/dev/null && changed "group: removed $NPU_GROUP"
    fi
    if [ -d "$DESTDIR$VENV" ]; then
        rm -rf "$DESTDIR$VENV"
        changed "venv: removed $VENV"
    fi
    rm -f "$RECORD"
    rmdir "$DESTDIR$PREFIX" 2>/dev/null || true
    [ -e "$DESTDIR$SYSCONFDIR/config.toml" ] && say "config: $SYSCONFDIR/config.toml kept"
    if [ "$CHANGED" = 0 ]; then say "done: nothing to remove"; else say "done: $CHANGED removed"; fi
}

case "${1:-install}" in
    install) do_install ;;
    uninstall) do_uninstall ;;
    *) die "usage: install.sh [install|uninstall]" ;;
esac
