"""Stand-in checkpoints: the real models' architectures and file formats, filled with random values.

The real weights cannot be fetched on the test machines, so tests serve these through the local Hub server
(tests/support/hub_server.py) under the real repository names. Every stand-in folder carries a README.md
saying that its files are stand-ins: they load and run in the upstream code, generation speed measured on
the `real` size is real, audio quality is noise.

Each model has one module here. A module that defines `register(models)` adds its subcommand to
`python -m tests.support.standins` (see __main__.py); `add_common` there gives the OUT, --size and --seed
arguments every model takes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

Size = Literal["tiny", "real"]
SIZES: tuple[str, ...] = ("tiny", "real")


@contextmanager
def partial_path(path: Path) -> Iterator[Path]:
    """Yield NAME.partial to write (by any library), then fsync it and rename it to NAME."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        yield partial
        with open(partial, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with partial_path(path) as partial:
        partial.write_text(text, encoding="utf-8")
