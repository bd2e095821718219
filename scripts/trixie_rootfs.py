"""Print the path of the Debian trixie root filesystem tar that scripts/engines-trixie.sh runs its engines from.

Made with imgbuild's own bootstrap cache (mmdebstrap, keyed by suite, variant, packages and mirror), so a
second start reuses it and a change of package list makes a new one.
"""

from __future__ import annotations

import sys

from imgbuild.build.bootstrap import make_rootfs
from imgbuild.foundation import hostconfig
from imgbuild.foundation.cachedir import default_cache_dir
from imgbuild.foundation.progress import ProgressEvent
from imgbuild.recipe.model import Bootstrap

PACKAGES = ["docker.io", "podman", "runc", "crun", "iptables", "iproute2", "ca-certificates"]


def main() -> int:
    mirror = hostconfig.apt_archive_url()
    if not mirror:
        print("trixie_rootfs: this host has no apt sources to take a Debian mirror from", file=sys.stderr)
        return 1

    def show(event: ProgressEvent) -> None:
        if event.message:
            print(event.message, file=sys.stderr)

    spec = Bootstrap(suite="trixie", variant="apt", include=PACKAGES)
    path, _cached = make_rootfs(spec, mirror, default_cache_dir(), progress=show)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
