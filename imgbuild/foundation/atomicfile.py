"""Small files written whole or not at all: NAME.partial, fsync, rename (the project's one copy of it), and
the mapping of a full disk or another OS error to the error naming the file."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imgbuild.foundation.errors import ArchiveError, DiskFull


def write_atomic(path: Path, data: bytes) -> None:
    """NAME.partial, fsync, rename: never a half-written file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, path)


@contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """Turn "no space left" into DiskFull naming the path; other OS errors into ArchiveError."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(str(path)) from exc
        raise ArchiveError(f"{exc.filename or path}: {exc.strerror or exc}") from exc


def write_file_atomic(path: Path, data: bytes) -> None:
    """NAME.partial, fsync, rename; a full disk or other OS error becomes DiskFull or ArchiveError."""
    with disk_errors(path):
        write_atomic(path, data)


def fsync_dir(path: Path) -> None:
    with disk_errors(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
