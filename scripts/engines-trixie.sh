#!/bin/sh
# Start or stop today's engines from a Debian trixie root filesystem, each on a private socket:
#   docker26   Docker Engine 26 with the classic image store
#   docker26c  Docker Engine 26 with the containerd image store (the default of Docker 29)
#   podman5    Podman 5.4 (its Docker-compatible API)
#   scripts/engines-trixie.sh start [docker26|docker26c|podman5|all]   prints export lines
#   scripts/engines-trixie.sh stop [docker26|docker26c|podman5|all]
#   scripts/engines-trixie.sh env                                      prints the export lines again
#   scripts/engines-trixie.sh running [NAME|all]                       exit status 0 when they run
# They cannot be installed beside Debian 12's engines, so each runs in a privileged container of the host's
# Podman, sharing the host's network (a published port is reachable on the host's 127.0.0.1) and with its
# socket and storage bind-mounted from $IMGBUILD_TRIXIE_ENGINES_DIR (default /run/imgbuild-engines-trixie),
# the storage at the same path inside as outside, so imgbuild on the host can read layers where the engine says,
# apart from scripts/engines.sh's engines. The host's Podman keeps these containers in its own storage there
# too, so tests against the host's engines never see them. The root filesystem tar is made once by
# mmdebstrap and cached in imgbuild's bootstrap cache (scripts/trixie_rootfs.py).
# Networking: each engine gets its own bridge and subnet so nothing collides with the host's docker0 or
# Podman's bridge; Docker 26 runs with iptables off (Docker Engine 20.10 on the host owns Docker's chains)
# and this script adds the forward and masquerade rules its bridge needs, removed again on stop.
set -eu
cd "$(dirname "$0")/.."

dir=${IMGBUILD_TRIXIE_ENGINES_DIR:-/run/imgbuild-engines-trixie}
python=${PYTHON:-.venv/bin/python}
ALL="docker26 docker26c podman5"

hostpodman() {
    CONTAINERS_CONF="$dir/host-containers.conf" podman --root "$dir/host-podman/root" \
        --runroot "$dir/host-podman/run" "$@"
}

subnet_of() {
    case "$1" in
        docker26) echo 172.30.26 ;;
        docker26c) echo 172.30.27 ;;
        podman5) echo 172.30.25 ;;
    esac
}

sock_of() {
    case "$1" in
        podman5) echo "$dir/$1/podman.sock" ;;
        *) echo "$dir/$1/docker.sock" ;;
    esac
}

var_of() {
    case "$1" in
        docker26) echo IMGBUILD_TEST_DOCKER26_HOST ;;
        docker26c) echo IMGBUILD_TEST_DOCKER26C_HOST ;;
        podman5) echo IMGBUILD_TEST_PODMAN5_HOST ;;
    esac
}

image_tag() {
    # The tar's name is the cache key of its inputs; a new package list gives a new image.
    key=$(basename "$1" .tar | cut -c1-16)
    echo "localhost/imgbuild-trixie-engines:$key"
}

prepare_image() {
    mkdir -p "$dir/host-podman"
    cat > "$dir/host-containers.conf" <<'CONF'
[engine]
runtime = "runc"

[containers]
default_ulimits = ["nofile=20000:20000", "nproc=1024:1024"]
CONF
    rootfs=$("$python" scripts/trixie_rootfs.py)
    tag=$(image_tag "$rootfs")
    if ! hostpodman image exists "$tag"; then
        hostpodman import --quiet "$rootfs" "$tag" >/dev/null
    fi
    echo "$tag"
}

firewall() {  # add|del NAME: forward and masquerade for the engine's subnet, in the host's tables
    net="$(subnet_of "$2").0/24"
    if [ "$1" = add ]; then flag=-I; else flag=-D; fi
    for rule in "FORWARD -s $net -j ACCEPT" "FORWARD -d $net -j ACCEPT"; do
        # shellcheck disable=SC2086
        if [ "$1" = del ] || ! iptables -C $rule 2>/dev/null; then iptables $flag $rule 2>/dev/null || true; fi
    done
    rule="POSTROUTING -t nat -s $net ! -d $net -j MASQUERADE"
    # shellcheck disable=SC2086
    if [ "$1" = del ] || ! iptables -C $rule 2>/dev/null; then iptables $flag $rule 2>/dev/null || true; fi
}

bridge_of() { echo "ib-$1"; }

make_bridge() {
    br=$(bridge_of "$1")
    if ! ip link show "$br" >/dev/null 2>&1; then
        ip link add "$br" type bridge
        ip addr add "$(subnet_of "$1").1/24" dev "$br"
    fi
    ip link set "$br" up
}

write_configs() {  # NAME: the engine's own configuration, in its bind-mounted state folder
    name=$1
    state="$dir/$name"
    mkdir -p "$state" "$dir/$name-data"
    case "$name" in
        docker26|docker26c)
            snapshotter=false
            [ "$name" = docker26c ] && snapshotter=true
            cat > "$state/daemon.json" <<JSON
{
  "bridge": "$(bridge_of "$name")",
  "iptables": false,
  "ip6tables": false,
  "features": {"containerd-snapshotter": $snapshotter}
}
JSON
            ;;
        podman5)
            cat > "$state/containers.conf" <<CONF
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[containers]
default_ulimits = ["nofile=20000:20000", "nproc=1024:1024"]

[network]
default_subnet = "$(subnet_of podman5).0/24"
# netavark defaults to nftables, which the root filesystem leaves out; iptables is the host's choice too
firewall_driver = "iptables"
CONF
            cat > "$state/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$dir/podman5-data"
runroot = "/run/containers/storage"
CONF
            ;;
    esac
}

answers() {  # NAME: the socket exists and the API answers /_ping
    sock=$(sock_of "$1")
    [ -S "$sock" ] && "$python" -c "import docker; docker.APIClient(base_url='unix://$sock', timeout=5).ping()" 2>/dev/null
}

alive() {
    # The host Podman's record alone is not enough: after the machine's processes were stopped without
    # `stop` (a restored snapshot, a killed session) it still says "running" for an engine that is gone.
    [ "$(hostpodman container inspect -f '{{.State.Running}}' "imgbuild-$1" 2>/dev/null)" = true ] && answers "$1"
}

wait_ready() {  # NAME: wait up to 60 s for the engine's API
    sock=$(sock_of "$1")
    i=0
    until answers "$1"; do
        i=$((i + 1))
        if [ "$i" -gt 120 ]; then
            echo "engines-trixie.sh: $1 does not answer at $sock within 60 s; its log:" >&2
            hostpodman logs --tail 30 "imgbuild-$1" >&2 || true
            exit 1
        fi
        sleep 0.5
    done
}

start_one() {
    name=$1
    image=$2
    if alive "$name"; then
        return
    fi
    hostpodman rm -f "imgbuild-$name" >/dev/null 2>&1 || true
    write_configs "$name"
    rm -f "$(sock_of "$name")"
    case "$name" in
        docker26|docker26c)
            make_bridge "$name"
            firewall add "$name"
            hostpodman run -d --name "imgbuild-$name" --privileged --cgroupns=host --network host \
                -v "$dir/$name:/run/engine" -v "$dir/$name-data:$dir/$name-data" "$image" \
                dockerd --host unix:///run/engine/docker.sock --config-file /run/engine/daemon.json \
                --data-root "$dir/$name-data" \
                --exec-root /run/docker-exec --pidfile /run/docker.pid >/dev/null
            ;;
        podman5)
            firewall add "$name"
            hostpodman run -d --name "imgbuild-$name" --privileged --cgroupns=host --network host \
                -e CONTAINERS_CONF=/run/engine/containers.conf -e CONTAINERS_STORAGE_CONF=/run/engine/storage.conf \
                -v "$dir/$name:/run/engine" -v "$dir/$name-data:$dir/$name-data" "$image" \
                podman system service --time=0 unix:///run/engine/podman.sock >/dev/null
            ;;
    esac
}

stop_one() {
    name=$1
    hostpodman stop -t 20 "imgbuild-$name" >/dev/null 2>&1 || true
    hostpodman rm -f "imgbuild-$name" >/dev/null 2>&1 || true
    rm -f "$(sock_of "$name")"
    case "$name" in
        docker26|docker26c) ip link del "$(bridge_of "$name")" 2>/dev/null || true ;;
    esac
    firewall del "$name"
}

print_env() {
    for name in $ALL; do
        sock=$(sock_of "$name")
        [ -S "$sock" ] && echo "export $(var_of "$name")=unix://$sock"
    done
    return 0
}

names() {
    case "${1:-all}" in
        all) echo "$ALL" ;;
        docker26|docker26c|podman5) echo "$1" ;;
        *) echo "usage: $0 start|stop [docker26|docker26c|podman5|all] | env" >&2; exit 2 ;;
    esac
}

cmd=${1:-}
mkdir -p "$dir"
case "$cmd" in
    start)
        chosen=$(names "${2:-all}")
        image=$(prepare_image)
        for name in $chosen; do start_one "$name" "$image"; done
        for name in $chosen; do wait_ready "$name"; done
        print_env ;;
    env) print_env ;;
    running)  # exit status 0 when every engine named (default: all) is running
        for name in $(names "${2:-all}"); do alive "$name" || exit 1; done ;;
    stop)
        for name in $(names "${2:-all}"); do stop_one "$name"; done ;;
    *) echo "usage: $0 start|stop|running [docker26|docker26c|podman5|all] | env" >&2; exit 2 ;;
esac
