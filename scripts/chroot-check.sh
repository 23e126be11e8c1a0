#!/bin/sh
# The install bar, by hand, in a fresh Debian chroot that has only python3-venv (needs root,
# debootstrap, a C compiler, mosquitto, and the network to the Debian mirror and PyPI):
#   1. the README's install command with SYSTEMD=no: user, config, unit and udev rule in place;
#   2. the same command again changes nothing;
#   3. `rkllm-mqtt check` against a simulator build that no test uses exits 0;
#   4. with that library unreadable (chmod 000: the service user cannot read it), FAIL and exit 3.
# Not part of `make test`: debootstrap and the package downloads take minutes and need the network.
#   sudo scripts/chroot-check.sh [DIR]      (DIR defaults to a new directory under /tmp; kept)
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$(mktemp -d /tmp/rkllm-chroot.XXXXXX)}
MIRROR=${MIRROR:-$(sed -n 's/^URIs: *//p; s/^deb \([^ ]*\) .*/\1/p' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1)}
PORT=${PORT:-18831}
step() { printf '\n=== %s\n' "$*"; }

if [ ! -x "$DIR/usr/bin/python3" ]; then
    step "debootstrap bookworm into $DIR (minbase + python3-venv)"
    debootstrap --variant=minbase --include=python3-venv,ca-certificates bookworm "$DIR" "$MIRROR" >"$DIR.debootstrap.log" 2>&1
fi
cp /etc/resolv.conf "$DIR/etc/resolv.conf"
# This machine's TLS trust (a network that inspects TLS has its own CA in the host's bundle).
cp /etc/ssl/certs/ca-certificates.crt "$DIR/etc/ssl/certs/host-ca-certificates.crt"
run() { chroot "$DIR" env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root \
    PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt "$@"; }
mountpoint -q "$DIR/proc" || mount -t proc proc "$DIR/proc"
trap 'umount "$DIR/proc" 2>/dev/null || true; kill "$BROKER" 2>/dev/null || true' EXIT INT TERM

step "the checkout, a runtime library no test uses (the 1.2.0 simulator at -O1), a model file"
rm -rf "$DIR/root/rkllm-mqtt" && mkdir -p "$DIR/root/rkllm-mqtt"
git -C "$SRC" archive HEAD | tar -x -C "$DIR/root/rkllm-mqtt"
cc -std=gnu11 -DRKLLM_SIM_ABI=120 -fPIC -shared -O1 -pthread \
    -o "$DIR/usr/lib/librkllmrt.so" "$SRC/rkllm_mqtt/simulator/rkllm_sim.c"
chmod 0644 "$DIR/usr/lib/librkllmrt.so"
mkdir -p "$DIR/opt/models"
printf 'RKLLM-SIM dummy model: accepted by the rkllm-mqtt simulator only\n' \
    >"$DIR/opt/models/Qwen2.5-1.5B-Instruct-rk3588-w8a8.rkllm"
chmod 0644 "$DIR/opt/models/Qwen2.5-1.5B-Instruct-rk3588-w8a8.rkllm"
mosquitto -p "$PORT" >/dev/null 2>&1 & BROKER=$!

step "install (1st run): cd rkllm-mqtt && SYSTEMD=no ./scripts/install.sh"
start=$(date +%s)
run sh -c 'cd /root/rkllm-mqtt && SYSTEMD=no ./scripts/install.sh'
echo "(took $(( $(date +%s) - start )) s)"
step "what is in place"
run sh -c 'id rkllm; ls -l /etc/rkllm-mqtt/config.toml /etc/systemd/system/rkllm-mqtt.service /etc/udev/rules.d/99-rknpu.rules /usr/local/bin/rkllm-mqtt'
step "install (2nd run)"
run sh -c 'cd /root/rkllm-mqtt && SYSTEMD=no ./scripts/install.sh'

sed -i "s/^port = 1883/port = $PORT/" "$DIR/etc/rkllm-mqtt/config.toml"
step "rkllm-mqtt check --config /etc/rkllm-mqtt/config.toml"
set +e
run rkllm-mqtt check --config /etc/rkllm-mqtt/config.toml; echo "exit code: $?"
chmod 000 "$DIR/usr/lib/librkllmrt.so"
step "the same with /usr/lib/librkllmrt.so at mode 000"
run rkllm-mqtt check --config /etc/rkllm-mqtt/config.toml; echo "exit code: $?"
chmod 0644 "$DIR/usr/lib/librkllmrt.so"
