"""The files imgbuild ships besides its code, found through importlib.resources wherever imgbuild is installed.

    imgbuild/data/Containerfiles/   the default python-base and app Containerfiles, and those the recipes name
    imgbuild/data/runtime/          the source of the TTS server (imgbuild_runtime) that app images install
    imgbuild/data/recipes/          the example recipes (`imgbuild example`); their relative paths point at
                                    the two folders above, as in a checkout

In a checkout the three are links to the top-level folders of the same names; pyproject.toml's package-data
names the files a wheel takes from them.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
from importlib import resources
from pathlib import Path

DATA_DIR = "data"
CONTAINERFILES_DIR = "Containerfiles"
RUNTIME_DIR = "runtime"
RECIPES_DIR = "recipes"
DEFAULT_CONTAINERFILES = {"base": "python-base.Containerfile", "app": "app.Containerfile"}

_kept = contextlib.ExitStack()  # a copy made for a zipped install lasts as long as the process
atexit.register(_kept.close)


@functools.cache
def data_root() -> Path:
    """imgbuild/data as a folder on disk: build contexts copy files from it, so it must be a real path."""
    return _kept.enter_context(resources.as_file(resources.files("imgbuild").joinpath(DATA_DIR)))


def default_containerfile(role: str) -> Path:
    """The Containerfile a recipe's `base` or `app` layer uses when it names none."""
    return data_root() / CONTAINERFILES_DIR / DEFAULT_CONTAINERFILES[role]
