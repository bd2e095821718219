"""imgbuild's cache folder: root filesystems, build contexts, SBOMs and push digests live below it."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    if os.environ.get("IMGBUILD_CACHE"):
        return Path(os.environ["IMGBUILD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgbuild"
