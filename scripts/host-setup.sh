#!/usr/bin/env bash
# Prepare this host for virtdoctor's build and its live tests (Debian 12, no systemd needed).
#
#   scripts/host-setup.sh --build-deps   what building libvirt-python needs: pkg-config,
#                                        libvirt-dev, gcc (and python3-venv / python3-dev when
#                                        the python3 in use lacks venv support or its headers)
#   scripts/host-setup.sh                the real parts for live tests: libvirt daemon, QEMU,
#                                        OVMF, dnsmasq; starts virtlogd and libvirtd when they
#                                        are not running; gives /dev/kvm group kvm and mode 0660
#                                        as udev would; defines and starts the "default" network;
#                                        fills the tiny test guest's cache (tests/live/tinyguest.py).
#
# Idempotent: a re-run on a prepared host installs nothing and starts nothing.
# Override the interpreter with PYTHON=... (the Makefile passes the one it builds .venv with).
set -euo pipefail

PYTHON=${PYTHON:-python3}
RUNTIME_PACKAGES=(libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils ovmf
                  dnsmasq-base acl osinfo-db virtinst
                  prometheus prometheus-node-exporter cron
                  swtpm swtpm-tools libcap2-bin iproute2)  # TPM (swtpm live tests), setcap (session bridge helper)
BUILD_PACKAGES=(pkg-config libvirt-dev gcc)

say() { printf 'host-setup: %s\n' "$*"; }
die() { printf 'host-setup: error: %s\n' "$*" >&2; exit 1; }

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

apt_updated=
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        is_installed "$p" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing packages ${missing[*]}; run as root or: apt-get install ${missing[*]}"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    apt-get install -y -q -o Dpkg::Options::=--force-confold "${missing[@]}" </dev/null
}

# Debian's own python3 needs python3-venv for "python3 -m venv" (ensurepip and its wheels) and
# python3-dev for Python.h. A pyenv or self-built python brings both; check it directly.
python_build_packages() {
    local exe pkgs=()
    exe=$(command -v "$PYTHON") || { echo python3 python3-venv python3-dev; return; }
    exe=$(readlink -f "$exe")
    if dpkg-query -S "$exe" >/dev/null 2>&1; then
        echo python3-venv python3-dev
        return
    fi
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || pkgs+=(python3-venv)
    "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || pkgs+=(python3-dev)
    echo "${pkgs[@]}"
}

running() {  # running NAME: a process whose command name is exactly NAME exists
    if command -v pgrep >/dev/null; then
        pgrep -x "$1" >/dev/null
    else
        grep -qx "$1" /proc/[0-9]*/comm 2>/dev/null
    fi
}

wait_for_libvirt() {
    local i
    for i in $(seq 1 100); do
        virsh -q -c qemu:///system version >/dev/null 2>&1 && return 0
        running libvirtd || break
        sleep 0.2
    done
    die "libvirtd does not answer on qemu:///system (see /var/log/libvirt/libvirtd.log)"
}

start_daemons() {
    mkdir -p /var/log/libvirt   # libvirtd exits at start without it
    if ! running virtlogd; then
        say "starting virtlogd"
        virtlogd -d
    fi
    if ! running libvirtd; then
        say "starting libvirtd"
        libvirtd -d
    fi
    wait_for_libvirt
}

fix_kvm_node() {
    [ -e /dev/kvm ] || { say "/dev/kvm is absent: guests will run under TCG"; return 0; }
    getent group kvm >/dev/null || groupadd --system kvm
    local now
    now=$(stat -c '%G %a' /dev/kvm)
    if [ "$now" != "kvm 660" ]; then
        say "/dev/kvm was '$now'; setting group kvm, mode 0660 (as udev's rule would)"
        chgrp kvm /dev/kvm
        chmod 0660 /dev/kvm
    fi
}

ensure_default_network() {
    local virsh=(virsh -q -c qemu:///system)
    if ! "${virsh[@]}" net-info default >/dev/null 2>&1; then
        say "defining the default network"
        "${virsh[@]}" net-define /usr/share/libvirt/networks/default.xml >/dev/null
    fi
    if [ "$("${virsh[@]}" net-info default | awk '$1 == "Autostart:" {print $2}')" != yes ]; then
        "${virsh[@]}" net-autostart default >/dev/null   # as Debian's package sets it up
    fi
    if ! network_active; then
        say "starting the default network"
        # a freshly started libvirtd may autostart it meanwhile: only a network still down fails
        "${virsh[@]}" net-start default >/dev/null 2>&1 || network_active \
            || "${virsh[@]}" net-start default >/dev/null
    fi
}

prepare_tinyguest() {
    # the tiny Linux guest of the live tests (tests/live/tinyguest.py): Debian's kernel,
    # busybox-static and qemu-guest-agent fetched with apt-get download and unpacked into its
    # cache, nothing installed on this host
    "$PYTHON" "$(dirname "$0")/../tests/live/tinyguest.py"
}

network_active() {
    [ "$(virsh -q -c qemu:///system net-info default | awk '$1 == "Active:" {print $2}')" = yes ]
}

case "${1:-}" in
    --build-deps)
        # shellcheck disable=SC2207
        ensure_packages "${BUILD_PACKAGES[@]}" $(python_build_packages)
        ;;
    "")
        [ "$(id -u)" -eq 0 ] || die "the live-test setup needs root (packages, daemons, /dev/kvm)"
        ensure_packages "${RUNTIME_PACKAGES[@]}"
        fix_kvm_node          # before libvirtd probes QEMU's capabilities
        start_daemons
        ensure_default_network
        prepare_tinyguest
        say "ready: libvirtd $(virsh -q -c qemu:///system version --daemon 2>/dev/null | awk '/daemon/ {print $NF}'), /dev/kvm $( [ -e /dev/kvm ] && stat -c '%G %a' /dev/kvm || echo absent)"
        ;;
    *)
        die "usage: $0 [--build-deps]"
        ;;
esac
