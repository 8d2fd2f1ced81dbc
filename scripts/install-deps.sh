#!/bin/sh
# Installs what Hangar needs from Debian's packages, only what is missing, so it is cheap to
# run every time. Needs root (as Hangar itself does).
set -eu

need=""
pkgs="runc docker-registry busybox-static ca-certificates python3 python3-venv e2fsprogs qemu-system-x86 iproute2 nftables iperf3"
# The benchmarks' baselines: skopeo + umoci for image pulls.
if [ "${HANGAR_BENCH_DEPS:-}" = 1 ]; then
    pkgs="$pkgs skopeo umoci"
fi
for pkg in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        need="$need $pkg"
    fi
done

if [ -n "$need" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "Hangar needs these Debian packages:$need (run as root, or install them first)" >&2
        exit 1
    fi
    echo "Installing:$need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends $need >/dev/null 2>&1 || {
        apt-get update -qq
        apt-get install -y --no-install-recommends $need
    }
fi

# The Debian package starts a registry service on :5000 on systems with systemd; Hangar's
# tests run their own registries, so that one is not needed.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

# The microvm runtime's guest kernel (Debian's linux-image-cloud-amd64, unpacked, not installed).
if [ "$(id -u)" -eq 0 ]; then
    "$(dirname "$0")/fetch-kernel.sh" /var/lib/hangar/kernel
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "Hangar is built with Rust's cargo, which is not on PATH (install it with rustup)" >&2
    exit 1
fi

# schemathesis (PyPI) checks the API against Fly's schema in the conformance test. It lives in
# a virtualenv under target/, pinned, built from Debian's own python3.
SCHEMATHESIS_VERSION=4.32.5
venv="$(cd "$(dirname "$0")/.." && pwd)/target/tools/schemathesis"
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "Installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
