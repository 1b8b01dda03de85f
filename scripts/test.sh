#!/usr/bin/env bash
# Runs greenlight's whole test suite on a fresh Debian machine, installing and
# starting what the tests need when it is missing: nginx, Debian's docker-registry,
# docker-compose, python3-aiosmtpd, openssl, curl, debootstrap, chromium and chromium-driver, the
# Docker daemon, cargo-nextest.
#   scripts/test.sh [extra cargo-nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v docker >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
# tests/notify.rs: a real SMTP server (aiosmtpd) and certificates for its TLS modes.
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || need+=(python3-aiosmtpd)
command -v openssl >/dev/null || need+=(openssl)
# tests/first_run.rs: scripts/demo.sh's readiness checks.
command -v curl >/dev/null || need+=(curl)
# tests/package.rs: a clean Debian image from Debian's mirror (scripts/debian-image.sh).
command -v debootstrap >/dev/null || need+=(debootstrap)
# tests/browser.rs: headless Chromium driven through chromedriver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    echo "starting dockerd"
    (dockerd >/var/log/dockerd.log 2>&1 &)
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi

command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

cargo build --workspace --all-targets
cargo nextest run --workspace "$@"
