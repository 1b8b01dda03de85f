#!/usr/bin/env bash
# Builds greenlight's Debian package from the workspace, with dpkg-deb alone:
#
#   scripts/build-deb.sh        -> dist/greenlight_<version>_<arch>.deb (path on stdout)
#
# It holds /usr/bin/greenlight (a release build), the systemd unit
# (debian/greenlight.service), /etc/greenlight/greenlight.toml as a conffile
# (`greenlight init`'s template), the nginx snippets under
# /usr/share/greenlight/nginx/, and the man page and bash/zsh/fish completions,
# generated from the binary's own clap definition by `greenlight dist`.
# GREENLIGHT_BINARY=path packs that binary instead of a fresh release build;
# DEB_OUT=dir writes the package there; DEB_COMPRESS=gzip (or none) packs faster than xz.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
binary=${GREENLIGHT_BINARY:-}
if [ -z "$binary" ]; then
    cargo build --release --bin greenlight >&2
    binary=${CARGO_TARGET_DIR:-$root/target}/release/greenlight
fi
out=${DEB_OUT:-$root/dist}
mkdir -p "$out"
deb="$out/greenlight_${version}_${arch}.deb"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/pkg"
gen="$stage/gen"
"$binary" dist "$gen"

install -d "$pkg/usr/bin"
strip -o "$pkg/usr/bin/greenlight" "$binary"
chmod 0755 "$pkg/usr/bin/greenlight"
install -D -m0644 debian/greenlight.service "$pkg/lib/systemd/system/greenlight.service"
install -D -m0640 "$gen/greenlight.toml" "$pkg/etc/greenlight/greenlight.toml"
install -D -m0644 "$gen/greenlight-nginx.conf" "$pkg/usr/share/greenlight/nginx/greenlight.conf"
for f in greenlight-verify.conf greenlight-verify.compose.conf greenlight-log.conf; do
    install -D -m0644 "nginx/$f" "$pkg/usr/share/greenlight/nginx/$f"
done
install -d "$pkg/usr/share/man/man1"
gzip -9n <"$gen/greenlight.1" >"$pkg/usr/share/man/man1/greenlight.1.gz"
install -D -m0644 "$gen/completions/greenlight.bash" \
    "$pkg/usr/share/bash-completion/completions/greenlight"
install -D -m0644 "$gen/completions/_greenlight" "$pkg/usr/share/zsh/vendor-completions/_greenlight"
install -D -m0644 "$gen/completions/greenlight.fish" \
    "$pkg/usr/share/fish/vendor_completions.d/greenlight.fish"
doc="$pkg/usr/share/doc/greenlight"
install -D -m0644 README.md "$doc/README.md"
install -D -m0644 greenlight.example.toml "$doc/greenlight.example.toml"
install -D -m0644 SECURITY.md "$doc/SECURITY.md"
printf 'greenlight\nLicense: MIT (see Cargo.toml)\n' >"$doc/copyright"

install -d "$pkg/DEBIAN"
install -m0755 debian/postinst debian/prerm debian/postrm "$pkg/DEBIAN/"
echo /etc/greenlight/greenlight.toml >"$pkg/DEBIAN/conffiles"
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: greenlight
Version: $version
Architecture: $arch
Maintainer: greenlight developers <greenlight@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
Depends: adduser, procps, libc6 (>= 2.34), libgcc-s1
Recommends: nginx-light | nginx, docker.io | docker-ce
Section: admin
Priority: optional
Homepage: file:///usr/share/doc/greenlight/README.md
Description: zero-downtime deploys of registry pushes behind nginx
 Push an image tag, and it goes live behind nginx with zero failed requests,
 or it does not go live and you are told exactly why: blue/green or rolling
 deployments on a plain Docker host, driven by registry webhooks, with every
 step recorded in SQLite.
CONTROL
dpkg-deb --root-owner-group "-Z${DEB_COMPRESS:-xz}" --build "$pkg" "$deb" >&2
echo "$deb"
