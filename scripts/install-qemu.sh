#!/usr/bin/env bash
# Installs qemu-system-aarch64 (Debian package qemu-system-arm) for the
# firmware boot test (firmware/qemu-virt/test.sh). Idempotent.
#
# The machine image already carries QEMU 10.0.2 library packages from
# bookworm-backports, so bookworm's own qemu-system-arm (7.2) fails on a
# dependency conflict: install from bookworm-backports instead (DESIGN.md §11).
#
# Exit status: 0 when qemu-system-aarch64 is available afterwards, 1 when the
# install was refused (one line on stderr says so; callers may skip the boot
# test on that).
set -uo pipefail

if command -v qemu-system-aarch64 >/dev/null 2>&1; then
    echo "install-qemu: $(qemu-system-aarch64 --version | head -n1) already installed"
    exit 0
fi

refuse() {
    echo "install-qemu: could not install qemu-system-aarch64 ($1); the firmware boot test cannot run here" >&2
    exit 1
}

SUDO=""
if [ "$(id -u)" != "0" ]; then
    command -v sudo >/dev/null 2>&1 || refuse "not root and no sudo"
    SUDO="sudo -n"
fi
command -v apt-get >/dev/null 2>&1 || refuse "no apt-get on this machine"

# Add bookworm-backports unless some apt source already names it.
if ! grep -qs '^[^#]*bookworm-backports' /etc/apt/sources.list \
    /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' \
        | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null \
        || refuse "cannot write /etc/apt/sources.list.d/bookworm-backports.list"
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
# Bounded: CI must never hang on a slow mirror.
if ! timeout -k 10 300 $SUDO apt-get update >"$log" 2>&1; then
    tail -n 5 "$log" >&2
    refuse "apt-get update failed"
fi
if ! timeout -k 10 600 $SUDO apt-get install -y --no-install-recommends -t bookworm-backports qemu-system-arm >"$log" 2>&1; then
    tail -n 5 "$log" >&2
    refuse "apt-get install -t bookworm-backports qemu-system-arm failed"
fi
command -v qemu-system-aarch64 >/dev/null 2>&1 || refuse "package installed but qemu-system-aarch64 is not on PATH"
echo "install-qemu: installed $(qemu-system-aarch64 --version | head -n1)"
