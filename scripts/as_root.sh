# Sourced by the scripts that need root (they install Debian packages and run engines as root):
#   . "$(dirname "$0")/as_root.sh"; as_root "$0" "$@"
# As root: returns. As another user: runs the script again through sudo (keeping the environment, so
# HF_ENDPOINT and IMGBUILD_* settings still apply), or says what is needed when sudo is not there.
as_root() {
    [ "$(id -u)" -eq 0 ] && return 0
    script=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
    shift
    if command -v sudo >/dev/null 2>&1; then
        echo "$(basename "$script"): needs root; running it again with sudo" >&2
        exec sudo -E "$script" "$@"
    fi
    echo "$(basename "$script"): needs root (it installs Debian packages and runs Podman) and sudo is not" \
        "installed; run it as root, e.g.: su -c '$script'" >&2
    exit 1
}
