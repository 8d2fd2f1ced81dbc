#!/bin/sh
# Fetches the microVM guest kernel: Debian's linux-image-cloud-amd64, downloaded with
# `apt-get download` and unpacked with `dpkg -x` into DIR (default /var/lib/hangar/kernel),
# never installed into /boot. Does nothing when DIR already holds that kernel version.
set -eu

dir="${1:-/var/lib/hangar/kernel}"
meta=linux-image-cloud-amd64
pkg="$(apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)"
if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg="$(apt-cache depends "$meta" | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)"
fi
[ -n "$pkg" ] || { echo "cannot resolve $meta to a kernel package" >&2; exit 1; }
version="${pkg#linux-image-}"
if [ -f "$dir/boot/vmlinuz-$version" ] && [ -d "$dir/lib/modules/$version" ]; then
    exit 0
fi
echo "Fetching the microVM guest kernel $pkg into $dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
(cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1) || {
    apt-get update -qq
    (cd "$tmp" && apt-get download "$pkg")
}
rm -rf "$dir.new"
mkdir -p "$dir.new"
dpkg -x "$tmp"/*.deb "$dir.new"
rm -rf "$dir"
mv "$dir.new" "$dir"
