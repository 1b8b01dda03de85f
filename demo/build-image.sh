#!/usr/bin/env bash
# Builds the demo app image: a static greenlight-demo binary in a FROM scratch image.
#
#   demo/build-image.sh VERSION TAG [--healthcheck]
#
# VERSION becomes DEMO_VERSION (what / and the X-Demo-Version header report), so two
# versions always give two different image digests. --healthcheck adds a Docker
# HEALTHCHECK that runs the binary's own probe (there is no shell in the image); it
# assumes the app listens on the default port 8080.
set -euo pipefail

usage() {
    echo "usage: $0 VERSION TAG [--healthcheck]" >&2
    exit 2
}

[[ $# -ge 2 && $# -le 3 ]] || usage
version=$1
tag=$2
healthcheck=no
if [[ $# -eq 3 ]]; then
    [[ $3 == --healthcheck ]] || usage
    healthcheck=yes
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=x86_64-unknown-linux-gnu
target_dir="$root/target/demo-static"

# A static-pie glibc binary runs FROM scratch (there is no musl target here). Flags
# from the caller's environment must not leak in: CARGO_ENCODED_RUSTFLAGS wins over
# RUSTFLAGS, and a differing set would rebuild everything.
env -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS -u CARGO_TARGET_DIR \
    RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --quiet --release -p greenlight-demo \
    --manifest-path "$root/Cargo.toml" --target "$target" --target-dir "$target_dir"
binary="$target_dir/$target/release/greenlight-demo"

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/greenlight-demo"
healthcheck_line='HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD ["/greenlight-demo","--probe","http://127.0.0.1:8080/healthz"]'
# Extra instructions go just before `ARG VERSION`, so the version stays the last layer.
while IFS= read -r line; do
    if [[ $healthcheck == yes && $line == "ARG VERSION"* ]]; then
        printf '%s\n' "$healthcheck_line"
    fi
    printf '%s\n' "$line"
done <"$root/demo/Dockerfile" >"$context/Dockerfile"

# The legacy builder (no pulls needed for FROM scratch) warns about its deprecation on
# stderr: only show stderr when the build fails.
if ! DOCKER_BUILDKIT=0 docker build --quiet --build-arg "VERSION=$version" --tag "$tag" \
    "$context" >/dev/null 2>"$context/build.err"; then
    cat "$context/build.err" >&2
    exit 1
fi
echo "$tag"
