#!/bin/sh
# Install what the tests and the demo need, on Debian or Ubuntu, as root. Safe to run again: it only
# installs what is missing and reinstalls the package only when pyproject.toml changed.
#   scripts/setup.sh     (as root; as another user it runs itself again through sudo)
# Package indexes come from the host's own configuration (apt sources; pip's config for the venv).
set -eu
. "$(dirname "$0")/as_root.sh"
as_root "$0" "$@"
cd "$(dirname "$0")/.."

# podman+runc: Podman engine (crun fails under hybrid cgroups here); docker.io: Docker Engine;
# mmdebstrap: base images without a registry; zstd, xorriso: archives and ISO images;
# iproute2, iptables: the bridges and forwarding of scripts/engines-trixie.sh's engines;
# espeak-ng: the reference voices of the TTS recipes' tests (tests/support/refvoices.py);
# docker-registry, apache2-utils (htpasswd), openssl: the TLS registry of the push tests; skopeo: bench_push.
packages="podman runc docker.io mmdebstrap zstd xorriso uidmap python3 python3-venv ca-certificates iproute2 iptables espeak-ng docker-registry apache2-utils openssl skopeo"
missing=""
for pkg in $packages; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
if [ -n "$missing" ]; then
    echo "setup.sh: installing$missing"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup.sh: imgbuild needs Python >= 3.11; $python is $("$python" --version 2>&1)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.imgbuild-installed
want=$(cat pyproject.toml runtime/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c 'import imgbuild, imgbuild_runtime' 2>/dev/null; then
    # runtime/: the TTS server installed into app images; its tests run here too.
    # pip's output goes to a log (host index settings can make it chatty) and is shown only on failure.
    if ! .venv/bin/python -m pip install -e '.[test,demo]' -e './runtime[piper,test]' > .venv/pip-install.log 2>&1; then
        tail -n 40 .venv/pip-install.log >&2
        echo "setup.sh: pip install failed; full log in .venv/pip-install.log" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
# .venv-torch: CPU torch and the model sources for the torch engines' tests (scripts/setup_torch.sh).
scripts/setup_torch.sh
echo "setup.sh: ready (.venv/bin/imgbuild)"
