"""One-layer test images from a tar held in memory.

They go in the way a recipe's `bootstrap:` rootfs does (imgbuild/build/bootstrap.py): through Docker
Engine's import endpoint, and on Podman as a docker-archive through its load endpoint, because Podman 4.3's
import endpoint keeps a copy of every upload in its temporary folder for good.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from imgbuild.build.bootstrap import import_rootfs
from imgbuild.engine.connect import Engine


def import_tar(engine: Engine, data: bytes, tag: str) -> str:
    """Import the tar ``data`` as a one-layer image tagged ``tag``; returns the image id."""
    with tempfile.TemporaryDirectory(prefix="imgbuild-test-import-") as folder:
        path = Path(folder) / "layer.tar"
        path.write_bytes(data)
        return import_rootfs(engine, path, tag, labels={})
