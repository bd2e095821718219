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
if alive podman && alive docker; then
    echo "test.sh: using the engines already running in $dir"
else
    trap 'scripts/engines.sh stop' EXIT
    trap 'exit 130' INT TERM
fi
eval "$(scripts/engines.sh start both)"

export IMGBUILD_REQUIRE_ENGINES=1
.venv/bin/python -m pytest --timeout=1200 "$@"
