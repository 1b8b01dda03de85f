#!/usr/bin/env bash
# Builds greenlight's Docker image from a release build, with no base image:
# the binary and the shared libraries `ldd` lists go into dist/rootfs.
#   scripts/build-image.sh [TAG]    (default greenlight:latest)
# GREENLIGHT_BINARY=path uses that binary instead of a fresh release build.
set -euo pipefail
tag=${1:-greenlight:latest}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
binary=${GREENLIGHT_BINARY:-}
if [ -z "$binary" ]; then
    cargo build --release --bin greenlight >&2
    binary=target/release/greenlight
fi
rootfs=dist/rootfs
rm -rf "$rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/greenlight" "$rootfs/var/lib" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
strip -o "$rootfs/usr/local/bin/greenlight" "$binary"
ldd "$binary" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\ngreenlight:x:10001:10001:greenlight:/var/lib/greenlight:/sbin/nologin\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\ngreenlight:x:10001:\n' > "$rootfs/etc/group"
# The image runs as greenlight (10001): its state directory, copied with
# --chown by the Dockerfile (COPY makes everything else root's).
rm -rf dist/state && mkdir -p dist/state
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$rootfs/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
fi
DOCKER_BUILDKIT=0 docker build -q -t "$tag" . >&2
echo "$tag"
