#!/usr/bin/env bash
# Step one of the compose quickstart: builds its three images on this host
# (nothing is pulled from a public registry) and gives it an admin token.
#
#   compose/build-images.sh
#   docker-compose up -d
#   docker-compose exec greenlight greenlight deploy demo --tag v1
#
# - greenlight:latest       scripts/build-image.sh (a release build, FROM scratch)
# - greenlight-nginx:host   nginx/build-image.sh: this host's nginx (apt-get install
#                           nginx-light); NGINX_IMAGE=nginx:1.27 uses the official one
# - greenlight-demo:v1      demo/build-image.sh: the demo app, FROM scratch
# - .env                    GREENLIGHT_TOKEN, generated once (mode 0600); docker-compose
#                           reads it. Log in to http://127.0.0.1:8787/ with it.
#
# GREENLIGHT_IMAGE, NGINX_IMAGE, DEMO_IMAGE name the images (docker-compose.yml reads
# the same variables); ENV_FILE another .env; GREENLIGHT_BINARY skips the release build.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
greenlight_image=${GREENLIGHT_IMAGE:-greenlight:latest}
nginx_image=${NGINX_IMAGE:-greenlight-nginx:host}
demo_image=${DEMO_IMAGE:-greenlight-demo}
env_file=${ENV_FILE:-$root/.env}

"$root/scripts/build-image.sh" "$greenlight_image" >/dev/null
if [[ $nginx_image == nginx:* ]] && docker image inspect "$nginx_image" >/dev/null 2>&1; then
    echo "using $nginx_image as it is"
else
    "$root/nginx/build-image.sh" "$nginx_image" >/dev/null
fi
"$root/demo/build-image.sh" v1 "$demo_image:v1" >/dev/null
if ! grep -qs '^GREENLIGHT_TOKEN=' "$env_file"; then
    (
        umask 077
        echo "GREENLIGHT_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >>"$env_file"
    )
fi
echo "built $greenlight_image, $nginx_image and $demo_image:v1; the admin token is in $env_file"
echo "next: docker-compose up -d && docker-compose exec greenlight greenlight deploy demo --tag v1"
