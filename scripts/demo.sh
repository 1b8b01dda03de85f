#!/usr/bin/env bash
# greenlight's main job on this machine, end to end, in one command:
#
#   scripts/demo.sh             start a local registry, nginx, greenlight and the demo
#                               app; push v1 (deployed by the registry's webhook), then
#                               v2 while a load probe runs through nginx; print the figures
#   scripts/demo.sh push v3     build and push another version (the webhook deploys it)
#   scripts/demo.sh stop        stop everything and remove what the demo made
#
# Everything listens on loopback; state lives under target/demo/ (SQLite, configs,
# logs). It installs what it needs when missing (as root, with apt-get: nginx-light,
# docker-registry, docker.io, python3) and starts dockerd if it is not running.
# No image is pulled from a public registry: the demo app is built FROM scratch.
#
# Ports (change them with these variables when one is taken):
#   DEMO_HTTP_PORT=18080      the app, through nginx
#   DEMO_GREENLIGHT_PORT=18787 greenlight: webhooks, admin API, status page
#   DEMO_REGISTRY_PORT=15000  the registry
#   DEMO_VERIFY_PORT=18099    nginx's verify server
# GREENLIGHT_BINARY=path uses that greenlight instead of building one (cargo build).
# DEMO_RATE=50 is the probe's requests a second.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state="$root/target/demo"
http_port=${DEMO_HTTP_PORT:-18080}
gl_port=${DEMO_GREENLIGHT_PORT:-18787}
registry_port=${DEMO_REGISTRY_PORT:-15000}
verify_port=${DEMO_VERIFY_PORT:-18099}
rate=${DEMO_RATE:-50}
# Names of the demo's own: nothing else on the machine is touched.
service=hello-demo
network=greenlight-demo-net
local_image=greenlight-demo-local
registry="127.0.0.1:$registry_port"
repo="$registry/$service"

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
[ -t 1 ] && [ -z "${NO_COLOR:-}" ] || say() { printf '==> %s\n' "$*"; }
die() {
    echo "demo: $*" >&2
    exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
    local deadline=$(($(date +%s) + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

greenlight() { GREENLIGHT_CONFIG="$state/greenlight.toml" "$(cat "$state/binary")" "$@"; }

install_missing() {
    local need=()
    [ -x /usr/sbin/nginx ] || need+=(nginx-light)
    [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
    command -v docker >/dev/null || need+=(docker.io)
    command -v python3 >/dev/null || need+=(python3)
    command -v curl >/dev/null || need+=(curl)
    if [ ${#need[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || die "missing: ${need[*]}; run as root (or sudo apt-get install ${need[*]})"
        say "installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    if ! docker info >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || die "cannot reach the Docker daemon: start it, or join the docker group"
        say "starting dockerd (log: /var/log/dockerd.log)"
        (dockerd >/var/log/dockerd.log 2>&1 &)
        wait_for 60 docker info || die "dockerd did not start; see /var/log/dockerd.log"
    fi
    command -v cargo >/dev/null || [ -n "${GREENLIGHT_BINARY:-}" ] ||
        die "cargo is missing: install Rust (https://rustup.rs), then run this again"
}

check_ports() {
    local name port
    for name in DEMO_HTTP_PORT:$http_port DEMO_GREENLIGHT_PORT:$gl_port \
        DEMO_REGISTRY_PORT:$registry_port DEMO_VERIFY_PORT:$verify_port; do
        port=${name#*:}
        if listening "$port"; then
            die "port $port is taken (by: $(ss -ltnpH "sport = :$port" 2>/dev/null | grep -o 'users:.*' || echo '?')); set ${name%%:*} to a free port"
        fi
    done
}

build() {
    if [ -n "${GREENLIGHT_BINARY:-}" ]; then
        realpath "$GREENLIGHT_BINARY" >"$state/binary"
    else
        say "building greenlight (cargo build; the first build takes a few minutes)"
        (cd "$root" && cargo build --quiet --bin greenlight)
        echo "${CARGO_TARGET_DIR:-$root/target}/debug/greenlight" >"$state/binary"
    fi
    say "building the demo app, v1 and v2 (FROM scratch)"
    "$root/demo/build-image.sh" v1 "$local_image:v1" >/dev/null
    "$root/demo/build-image.sh" v2 "$local_image:v2" >/dev/null
}

write_configs() {
    local token hook_token
    token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    hook_token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    (
        umask 077
        printf '%s\n' "$token" >"$state/admin-token"
        cat >"$state/greenlight.toml" <<EOF
# Written by scripts/demo.sh: greenlight on loopback, state next to this file.
[server]
listen = "127.0.0.1:$gl_port"
admin_token = "$token"
state = "state.db"

[nginx]
mode = "host"
binary = "/usr/sbin/nginx"
prefix = "$state/nginx"
config = "$state/nginx/nginx.conf"
upstreams_dir = "$state/nginx/upstreams"
verify_url = "http://127.0.0.1:$verify_port"
drain_timeout = "10s"

[webhooks]
registry_token = "$hook_token"

[[service]]
name = "$service"
image = "$repo"
port = 8080
network = "$network"

[service.health]
path = "/healthz"
interval = "200ms"
healthy_after = 2

[service.rollout]
stop_grace = "2s"
keep_images = 2
EOF
    )
    mkdir -p "$state/registry" "$state/nginx/upstreams"
    cat >"$state/registry/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $state/registry/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$registry_port
  secret: greenlight-demo
# Every push is announced to greenlight's Distribution webhook.
notifications:
  endpoints:
    - name: greenlight
      url: http://127.0.0.1:$gl_port/hooks/registry
      headers:
        Authorization: [Bearer $hook_token]
      timeout: 2s
      threshold: 5
      backoff: 1s
EOF
    local n="$state/nginx"
    {
        cat <<EOF
# Written by scripts/demo.sh.
worker_processes 2;
pid $n/nginx.pid;
error_log $n/error.log notice;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $n/client_body_temp;
    proxy_temp_path $n/proxy_temp;
    fastcgi_temp_path $n/fastcgi_temp;
    uwsgi_temp_path $n/uwsgi_temp;
    scgi_temp_path $n/scgi_temp;

    # The upstreams greenlight renders.
    include $n/upstreams/*.conf;

    # The site: the demo app, by its service name.
    server {
        listen 127.0.0.1:$http_port reuseport;
        location / {
            set \$greenlight_upstream $service;
            proxy_pass http://\$greenlight_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }

EOF
        # The shipped verify server, on the demo's port.
        sed "s/listen 127.0.0.1:8099 reuseport;/listen 127.0.0.1:$verify_port reuseport;/" \
            "$root/nginx/greenlight-verify.conf"
        echo "}"
    } >"$n/nginx.conf"
}

start_parts() {
    say "starting the registry on $registry (Debian's docker-registry; notifications to greenlight)"
    nohup /usr/bin/docker-registry serve "$state/registry/config.yml" \
        >"$state/registry.log" 2>&1 </dev/null &
    echo $! >"$state/registry.pid"
    wait_for 20 http_ok "http://$registry/v2/" || die "the registry did not start; see $state/registry.log"

    say "starting nginx on 127.0.0.1:$http_port (verify server on 127.0.0.1:$verify_port)"
    /usr/sbin/nginx -p "$state/nginx" -c "$state/nginx/nginx.conf" -e "$state/nginx/error.log" ||
        die "nginx did not start; see $state/nginx/error.log"
    wait_for 10 listening "$http_port" || die "nginx does not listen; see $state/nginx/error.log"

    say "starting greenlight on 127.0.0.1:$gl_port (state: $state/state.db)"
    local bin
    bin=$(cat "$state/binary")
    GREENLIGHT_CONFIG="$state/greenlight.toml" NO_COLOR=1 \
        nohup "$bin" serve >"$state/greenlight.log" 2>&1 </dev/null &
    echo $! >"$state/greenlight.pid"
    wait_for 30 http_ok "http://127.0.0.1:$gl_port/healthz" ||
        die "greenlight did not start; see $state/greenlight.log"
}

# Pushes VERSION to the registry and follows the deployment its webhook starts;
# prints how long from the push to live.
push() {
    local version=$1 started watch_pid
    docker tag "$local_image:$version" "$repo:$version"
    # Follow the deployment the push will start (watch waits for the next one).
    greenlight watch --service "$service" --timeout 60s &
    watch_pid=$!
    started=$(now)
    docker push --quiet "$repo:$version" >/dev/null
    docker rmi "$repo:$version" >/dev/null # greenlight pulls what it deploys
    wait "$watch_pid" || die "the deployment of $version did not succeed; see greenlight history --steps, $state/greenlight.log"
    pushed_to_live=$(since "$started")
    echo "$started" >"$state/pushed-$version"
}

start() {
    install_missing
    [ ! -d "$state" ] || stop quiet
    check_ports
    mkdir -p "$state"
    local begun
    begun=$(now)
    build
    write_configs
    start_parts

    say "pushing v1: the registry's webhook tells greenlight, which deploys it"
    push v1
    local v1_live=$pushed_to_live
    http_ok "http://127.0.0.1:$http_port/" || die "nginx does not serve v1; see $state/nginx/error.log"

    say "pushing v2 while a load probe sends $rate requests a second through nginx"
    nohup python3 "$root/scripts/demo-probe.py" "http://127.0.0.1:$http_port/" "$rate" \
        "$state/probe.stop" "$state/probe.json" >"$state/probe.log" 2>&1 </dev/null &
    echo $! >"$state/probe.pid"
    sleep 1 # a second of traffic on v1 before the push
    push v2
    local v2_live=$pushed_to_live
    sleep 1 # and a second on v2 after it
    touch "$state/probe.stop"
    wait_for 15 test -f "$state/probe.json" || die "the probe did not finish; see $state/probe.log"
    rm -f "$state/probe.pid" "$state/probe.stop"

    local sent failed versions seen
    read -r sent failed versions seen < <(python3 - "$state/probe.json" "$state/pushed-v2" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
pushed = float(open(sys.argv[2]).read())
seen = s["first_seen"].get("v2")
print(s["sent"], s["failed"], "->".join(s["versions"]) or "none",
      f"{seen - pushed:.1f}s" if seen else "never")
EOF
    )
    local bin
    bin=$(cat "$state/binary")
    cat <<EOF

greenlight demo: done in $(since "$begun")
  v1  pushed to $repo:v1; live $v1_live after the push (registry webhook -> deployment)
  v2  pushed while the probe ran; live $v2_live after the push (first answered $seen after it)
  probe: $sent requests sent, $failed failed; versions seen: ${versions//->/ -> }

Where to look next
  the app, through nginx   curl -i http://127.0.0.1:$http_port/
  the status page          http://127.0.0.1:$gl_port/  (log in with the token: cat $state/admin-token)
  the CLI                  export GREENLIGHT_CONFIG=$state/greenlight.toml
                           $bin status
                           $bin history --steps
                           $bin deliveries
  push another version     scripts/demo.sh push v3
  logs                     $state/greenlight.log, $state/registry.log, $state/nginx/error.log
  stop and clean up        scripts/demo.sh stop
EOF
    [ "$failed" = 0 ] || exit 1
}

push_another() {
    local version=${1:?usage: scripts/demo.sh push VERSION}
    alive "$state/greenlight.pid" || die "the demo is not running: start it with scripts/demo.sh"
    say "building $version and pushing it to $repo:$version"
    "$root/demo/build-image.sh" "$version" "$local_image:$version" >/dev/null
    push "$version"
    echo "$version is live $pushed_to_live after the push: curl -i http://127.0.0.1:$http_port/"
}

# Stops every process the demo started and removes everything it made.
stop() {
    local quiet=${1:-}
    [ -n "$quiet" ] || say "stopping the demo"
    if alive "$state/probe.pid"; then kill "$(cat "$state/probe.pid")" 2>/dev/null || true; fi
    if alive "$state/greenlight.pid"; then
        kill -TERM "$(cat "$state/greenlight.pid")" 2>/dev/null || true
        wait_for 20 bash -c "! kill -0 $(cat "$state/greenlight.pid") 2>/dev/null" ||
            kill -KILL "$(cat "$state/greenlight.pid")" 2>/dev/null || true
    fi
    if alive "$state/nginx/nginx.pid"; then
        local pid
        pid=$(cat "$state/nginx/nginx.pid")
        kill -QUIT "$pid" 2>/dev/null || true
        wait_for 20 bash -c "! kill -0 $pid 2>/dev/null" || kill -KILL "$pid" 2>/dev/null || true
    fi
    if alive "$state/registry.pid"; then
        local pid
        pid=$(cat "$state/registry.pid")
        kill -TERM "$pid" 2>/dev/null || true
        wait_for 10 bash -c "! kill -0 $pid 2>/dev/null" || kill -KILL "$pid" 2>/dev/null || true
    fi
    if docker info >/dev/null 2>&1; then
        local ids images
        ids=$(docker ps -aq --filter "label=greenlight.service=$service")
        [ -z "$ids" ] || docker rm -f $ids >/dev/null
        docker network rm "$network" >/dev/null 2>&1 || true
        images=$(docker images --format '{{.Repository}}:{{.Tag}}' |
            grep -E "^($local_image|$registry/$service):" | grep -v ':<none>$' || true)
        [ -z "$images" ] || docker rmi -f $images >/dev/null 2>&1 || true
        # Pulled by digest: no tag, only a digest reference.
        images=$(docker images --digests --format '{{.Repository}}@{{.Digest}}' |
            grep "^$registry/$service@sha256:" || true)
        [ -z "$images" ] || docker rmi -f $images >/dev/null 2>&1 || true
    fi
    rm -rf "$state"
    [ -n "$quiet" ] || echo "stopped; nothing of the demo is left (containers, network, images, $state)"
}

case ${1:-start} in
start) start ;;
push) push_another "${2:-}" ;;
stop) stop ;;
*)
    echo "usage: scripts/demo.sh [start | push VERSION | stop]" >&2
    exit 2
    ;;
esac
