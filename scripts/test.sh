#!/bin/sh
# Run the whole test suite against real engines: Podman and Docker Engine on private sockets.
#   scripts/test.sh [pytest arguments]     (as root; as another user it runs itself again through sudo)
# Engine tests must not be skipped: a skipped engine test fails the run (IMGBUILD_REQUIRE_ENGINES=1).
# Engines this script starts are stopped when it ends; engines that were already running are left alone.
set -eu
. "$(dirname "$0")/as_root.sh"
as_root "$0" "$@"
cd "$(dirname "$0")/.."

scripts/setup.sh

dir=${IMGBUILD_ENGINES_DIR:-/run/imgbuild-engines}
alive() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }
stop=""
trap 'eval "$stop"' EXIT
trap 'exit 130' INT TERM
if alive podman && alive docker; then
    echo "test.sh: using the engines already running in $dir"
else
    stop="scripts/engines.sh stop"
fi
# Assigned first so that a failed start stops the run here (set -e) instead of leaving the engines unset.
engines_env=$(scripts/engines.sh start both)
eval "$engines_env"
# Docker Engine 26 (classic and containerd image store) and Podman 5 from a trixie root filesystem, for the
# tests marked newer_engines (DEVELOPING.md); the first start makes the rootfs (about a minute, then cached).
if scripts/engines-trixie.sh running; then
    echo "test.sh: using the newer engines already running"
else
    stop="${stop:+$stop; }scripts/engines-trixie.sh stop"
fi
engines_env=$(scripts/engines-trixie.sh start)
eval "$engines_env"

export IMGBUILD_REQUIRE_ENGINES=1
# IMGBUILD_TEST_DEADLINE (seconds since the epoch; .ci/run sets it): the tests marked `extended` run after
# all the others, and only if they can start before that time; otherwise the run says they were left out.
if [ -z "${IMGBUILD_TEST_DEADLINE:-}" ]; then
    exec .venv/bin/python -m pytest --timeout=1200 "$@"
fi
status=0
.venv/bin/python -m pytest --timeout=1200 -m "not extended" "$@" || status=$?
if [ "$status" -ne 0 ]; then
    exit "$status"
fi
if [ "$(date +%s)" -lt "$IMGBUILD_TEST_DEADLINE" ]; then
    .venv/bin/python -m pytest --timeout=1200 -m extended "$@"
else
    echo "test.sh: the time budget is spent; the tests marked extended did not run:"
    .venv/bin/python -m pytest --collect-only -q -m extended "$@" | grep '::' || true
fi
