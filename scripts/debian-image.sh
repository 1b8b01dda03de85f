#!/usr/bin/env bash
# A clean Debian image built from Debian's own packages (no public image is
# pulled): debootstrap from Debian's mirror, then `docker import`. The rootfs
# tarball is cached under target/debian/, so a second run only imports it.
#
#   scripts/debian-image.sh [TAG]     (default greenlight-debian:bookworm)
#
# It holds a minimal bookworm with systemd (for systemd-analyze verify),
# nginx-light, adduser and procps: what greenlight's package expects beside it.
# DEBIAN_MIRROR overrides http://deb.debian.org/debian.
set -euo pipefail
tag=${1:-greenlight-debian:bookworm}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$root/target/debian"
tarball="$cache/bookworm-rootfs.tar"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
include=systemd,nginx-light,adduser,procps,ca-certificates

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    exit 0
fi
if [ ! -f "$tarball" ]; then
    command -v debootstrap >/dev/null || {
        echo "debian-image: debootstrap is missing: apt-get install debootstrap" >&2
        exit 1
    }
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    echo "debootstrap bookworm ($include) from $mirror: a few minutes, once" >&2
    debootstrap --variant=minbase --include="$include" bookworm "$work" "$mirror" \
        >"$cache/debootstrap.log" 2>&1 || {
        echo "debian-image: debootstrap failed; see $cache/debootstrap.log" >&2
        exit 1
    }
    rm -rf "$work"/var/cache/apt/archives/*.deb "$work"/var/lib/apt/lists/*
    tar -C "$work" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
fi
docker import --change 'CMD ["/bin/bash"]' "$tarball" "$tag" >/dev/null
echo "$tag"
