#!/bin/sh
# Start or stop a private Podman API service and a private Docker Engine for tests and the demo.
#   scripts/engines.sh start [podman|docker|both]   prints export lines for DOCKER_HOST-style variables
#   scripts/engines.sh stop [podman|docker|both]
#   scripts/engines.sh env                           prints the export lines again
# State lives under $IMGBUILD_ENGINES_DIR (default /run/imgbuild-engines).
# Quirks handled (see shared notes on these machines): crun cannot run under hybrid cgroups and the
# default nofile ulimit is refused, so Podman gets a containers.conf that selects runc and sets ulimits.
set -eu

dir=${IMGBUILD_ENGINES_DIR:-/run/imgbuild-engines}
podman_sock="$dir/podman.sock"
docker_sock="$dir/docker.sock"

write_containers_conf() {
    cat > "$dir/containers.conf" <<'CONF'
[engine]
runtime = "runc"

[containers]
default_ulimits = ["nofile=20000:20000", "nproc=1024:1024"]
CONF
}

wait_for_socket() {
    i=0
    while [ ! -S "$1" ]; do
        i=$((i + 1))
        if [ "$i" -gt 120 ]; then
            echo "engines.sh: $2 did not create $1 within 60 s; see $dir/$2.log" >&2
            tail -n 20 "$dir/$2.log" >&2 || true
            exit 1
        fi
        sleep 0.5
    done
}

start_podman() {
    command -v podman >/dev/null || { echo "engines.sh: podman is not installed (apt-get install -y podman runc)" >&2; exit 1; }
    write_containers_conf
    if [ -S "$podman_sock" ] && [ -f "$dir/podman.pid" ] && kill -0 "$(cat "$dir/podman.pid")" 2>/dev/null; then
        return
    fi
    rm -f "$podman_sock"
    CONTAINERS_CONF="$dir/containers.conf" nohup podman system service --time=0 "unix://$podman_sock" \
        > "$dir/podman.log" 2>&1 &
    echo $! > "$dir/podman.pid"
    wait_for_socket "$podman_sock" podman
}

start_docker() {
    command -v dockerd >/dev/null || { echo "engines.sh: dockerd is not installed (apt-get install -y docker.io)" >&2; exit 1; }
    if [ -S "$docker_sock" ] && [ -f "$dir/docker.pid" ] && kill -0 "$(cat "$dir/docker.pid")" 2>/dev/null; then
        return
    fi
    rm -f "$docker_sock"
    mkdir -p "$dir/docker-data" "$dir/docker-exec"
    nohup dockerd --host "unix://$docker_sock" --data-root "$dir/docker-data" \
        --exec-root "$dir/docker-exec" --pidfile "$dir/docker.pid" > "$dir/docker.log" 2>&1 &
    wait_for_socket "$docker_sock" docker
    i=0
    until DOCKER_HOST="unix://$docker_sock" docker version >/dev/null 2>&1 || \
          python3 -c "import docker,sys; docker.DockerClient(base_url='unix://$docker_sock').ping()" 2>/dev/null; do
        i=$((i + 1)); [ "$i" -lt 60 ] || { echo "engines.sh: dockerd does not answer" >&2; exit 1; }
        sleep 0.5
    done
}

print_env() {
    [ -S "$podman_sock" ] && echo "export IMGBUILD_TEST_PODMAN_HOST=unix://$podman_sock"
    [ -S "$docker_sock" ] && echo "export IMGBUILD_TEST_DOCKER_HOST=unix://$docker_sock"
    echo "export CONTAINERS_CONF=$dir/containers.conf"
}

stop_one() {
    pidfile="$dir/$1.pid"
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 40 ]; do sleep 0.5; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

cmd=${1:-}
which=${2:-both}
mkdir -p "$dir"
case "$cmd" in
    start)
        case "$which" in
            podman) start_podman ;;
            docker) start_docker ;;
            both) start_podman; start_docker ;;
            *) echo "usage: $0 start [podman|docker|both]" >&2; exit 2 ;;
        esac
        print_env ;;
    env) print_env ;;
    stop)
        case "$which" in
            podman) stop_one podman; rm -f "$podman_sock" ;;
            docker) stop_one docker; rm -f "$docker_sock" ;;
            both) stop_one podman; stop_one docker; rm -f "$podman_sock" "$docker_sock" ;;
            *) echo "usage: $0 stop [podman|docker|both]" >&2; exit 2 ;;
        esac ;;
    *) echo "usage: $0 start [podman|docker|both] | env | stop [podman|docker|both]" >&2; exit 2 ;;
esac
