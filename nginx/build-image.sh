#!/usr/bin/env bash
# Builds a Docker image of the host's own nginx, for testing greenlight's container
# mode on machines that cannot pull images.
#
#   nginx/build-image.sh TAG
#
# The image holds /usr/sbin/nginx, the shared libraries it links (and the dynamic
# loader), mime.types, users root/www-data/nobody and nginx's usual directories;
# nothing else (no shell). Run it with your own config, e.g.
#   docker run -v DIR:/etc/greenlight-nginx TAG -p /etc/greenlight-nginx/ \
#       -c /etc/greenlight-nginx/nginx.conf
# The default command is `-g "daemon off;"` with the built-in /etc/nginx/nginx.conf
# path, so a mounted config must be passed with -c (and say `daemon off;` itself).
# Idempotent: rebuilding from the same host files reuses the cached image.
set -euo pipefail

[[ $# -eq 1 ]] || {
    echo "usage: $0 TAG" >&2
    exit 2
}
tag=$1
nginx=/usr/sbin/nginx
[[ -x $nginx ]] || {
    echo "$0: $nginx not found: install nginx (e.g. apt-get install nginx-light)" >&2
    exit 1
}

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
rootfs="$context/rootfs"

# Copies a host file to the same path in the rootfs, following symlinks.
copy() {
    mkdir -p "$rootfs$(dirname "$1")"
    cp -L --preserve=mode "$1" "$rootfs$1"
}

copy "$nginx"
# Lines look like "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or, for the
# loader, "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
while read -r library; do
    copy "$library"
done < <(ldd "$nginx" | grep -oE '(^|\s)/[^ ]+' | tr -d '[:blank:]' | sort -u)
copy /etc/nginx/mime.types

mkdir -p "$rootfs/etc"
cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PASSWD
# nginx's default `user nobody` wants a group called nobody as well as Debian's nogroup.
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
www-data:x:33:
nogroup:x:65534:
nobody:x:65534:
GROUP
cat >"$rootfs/etc/nsswitch.conf" <<'NSSWITCH'
passwd: files
group: files
hosts: files dns
NSSWITCH
mkdir -p "$rootfs/var/log/nginx" "$rootfs/var/lib/nginx" "$rootfs/run" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
# Same mtimes on every run, so the build cache recognises an unchanged rootfs.
find "$rootfs" -exec touch -h -d @0 {} +

cat >"$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs /
ENTRYPOINT ["/usr/sbin/nginx"]
CMD ["-g", "daemon off;"]
DOCKERFILE

# The legacy builder (no pulls needed for FROM scratch) warns about its deprecation on
# stderr: only show stderr when the build fails.
if ! DOCKER_BUILDKIT=0 docker build --quiet --tag "$tag" "$context" >/dev/null 2>"$context/build.err"; then
    cat "$context/build.err" >&2
    exit 1
fi
echo "$tag"
