"""A volume as the user hands it over - a folder or an .iso image - read through one small interface.

A ``VolumeSource`` opens, sizes and lists the files of one volume by their volume-relative path
(``blobs/layer0001.tar.zst.part001``). Folders follow no symlink below the volume and take no odd file
type for a file; an .iso image refuses symlinks when its index is read (imgbuild/discs/iso.py). A file that
cannot be used raises ``VolumeFileError`` naming the volume, the path and the fault.

Each source counts the bytes it reads from its disc (``bytes_read``): a command builds one source per
volume (imgbuild/discs/locate.py) and passes it down, so that count says how often it read each disc.
Small metadata files (manifest copy, SHA256SUMS, README.txt, configs) are read once and kept: reading one
again, or opening it for hashing, costs the disc nothing.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from imgbuild.foundation.errors import FileFault, VolumeFileError


class EntryType(StrEnum):
    FILE = "file"
    FOLDER = "folder"
    SYMLINK = "symlink"
    OTHER = "other"  # device, fifo, socket


@dataclass(frozen=True)
class Listing:
    """Everything below a volume's top: each entry's type by volume-relative path, sizes of regular files."""

    entries: dict[str, EntryType]
    sizes: dict[str, int]


class VolumeSource:
    """One volume's files by volume-relative path; subclasses say where the bytes come from."""

    def __init__(self, location: Path, name: str) -> None:
        self.location = location  # what the user named: a folder or an .iso file
        self.name = name  # the volume folder name it stands for
        self._read = 0
        self._lock = threading.Lock()
        self._small: dict[str, bytes] = {}

    @property
    def bytes_read(self) -> int:
        """Bytes read from this volume's disc so far (kept small files served again are not counted)."""
        return self._read

    def count(self, size: int) -> None:
        with self._lock:
            self._read += size

    def shown(self, relative: str) -> str:
        """How a file of this volume is named to a user."""
        return f"{self.location}/{relative}"

    def __str__(self) -> str:
        return str(self.location)

    def open(self, relative: str) -> BinaryIO:
        """A binary stream of the file (seekable); a kept small file is served from memory."""
        kept = self._small.get(relative)
        if kept is not None:
            return io.BytesIO(kept)
        return _Counted(self._open_raw(relative), self)  # type: ignore[return-value]

    def read_small(self, relative: str, limit: int) -> bytes:
        """A metadata file of at most ``limit`` bytes, read once per source."""
        kept = self._small.get(relative)
        if kept is not None:
            return kept
        size = self.size(relative)
        if size > limit:
            raise VolumeFileError(str(self.location), relative, FileFault.TOO_LARGE, f"larger than {limit} bytes")
        try:
            with self.open(relative) as handle:
                data = handle.read(size + 1)  # more than that: it grew while read
        except OSError as exc:
            raise VolumeFileError(str(self.location), relative, FileFault.UNREADABLE, exc.strerror or str(exc)) \
                from exc
        if len(data) > limit:
            raise VolumeFileError(str(self.location), relative, FileFault.TOO_LARGE, f"larger than {limit} bytes")
        self._small[relative] = data
        return data

    def exists(self, relative: str) -> bool:
        """True when ``relative`` is a usable regular file of the volume."""
        try:
            self.size(relative)
        except VolumeFileError:
            return False
        return True

    def size(self, relative: str) -> int:
        raise NotImplementedError

    def list(self) -> Listing:
        raise NotImplementedError

    def _open_raw(self, relative: str) -> io.RawIOBase:
        raise NotImplementedError


class FolderVolume(VolumeSource):
    """A volume folder: a copied disc, a mounted one, or a folder archive wrote."""

    def __init__(self, location: Path) -> None:
        super().__init__(Path(location), Path(location).name)

    def _checked(self, relative: str) -> tuple[Path, os.stat_result]:
        """``location/relative`` and its lstat, after checking that nothing below the volume is a symlink or an
        odd file type (``relative`` already matched the layout's patterns: no "..", not absolute)."""
        path = self.location
        parts = relative.split("/")
        for index, name in enumerate(parts):
            path = path / name
            at = "/".join(parts[:index + 1])
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                raise VolumeFileError(str(self.location), relative, FileFault.MISSING, "no such file") from None
            except OSError as exc:
                raise VolumeFileError(str(self.location), at, FileFault.UNREADABLE, exc.strerror or str(exc)) \
                    from exc
            if stat.S_ISLNK(info.st_mode):
                raise VolumeFileError(str(self.location), at, FileFault.SYMLINK,
                                      "is a symbolic link; volume files must be regular files")
            last = index == len(parts) - 1
            if last and not stat.S_ISREG(info.st_mode):
                raise VolumeFileError(str(self.location), at, FileFault.NOT_REGULAR, "not a regular file")
            if not last and not stat.S_ISDIR(info.st_mode):
                raise VolumeFileError(str(self.location), at, FileFault.NOT_FOLDER, "not a folder")
        return path, info

    def size(self, relative: str) -> int:
        return self._checked(relative)[1].st_size

    def _open_raw(self, relative: str) -> io.RawIOBase:
        path, _ = self._checked(relative)
        try:
            # O_NOFOLLOW: a symlink swapped in after the check is not followed either.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise VolumeFileError(str(self.location), relative, FileFault.UNREADABLE, exc.strerror or str(exc)) \
                from exc
        handle = io.FileIO(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            handle.close()
            raise VolumeFileError(str(self.location), relative, FileFault.NOT_REGULAR, "not a regular file")
        return handle

    def list(self) -> Listing:
        entries: dict[str, EntryType] = {}
        sizes: dict[str, int] = {}
        for rel, entry in _walk(self.location, ""):
            if entry.is_symlink():
                entries[rel] = EntryType.SYMLINK
            elif entry.is_dir(follow_symlinks=False):
                entries[rel] = EntryType.FOLDER
            elif entry.is_file(follow_symlinks=False):
                entries[rel] = EntryType.FILE
                sizes[rel] = entry.stat(follow_symlinks=False).st_size
            else:
                entries[rel] = EntryType.OTHER
        return Listing(entries, sizes)


def _walk(folder: Path, prefix: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry below ``folder``, each folder's entries sorted by name and before those of its subfolders;
    symlinks are not followed. Iterative: a hostile volume's deep nesting costs no recursion."""
    pending = [(folder, prefix)]
    while pending:
        here, at = pending.pop()
        with os.scandir(here) as found:
            entries = sorted(found, key=lambda e: e.name)
        for entry in entries:
            yield at + entry.name, entry
        pending += [(Path(e.path), at + e.name + "/") for e in reversed(entries) if e.is_dir(follow_symlinks=False)]


class _Counted(io.RawIOBase):
    """A raw file whose reads are counted on its volume source. Unbuffered, so that what is counted is what
    was asked for (a buffer would read ahead of a seek); ``read(n)`` returns n bytes unless the file ends."""

    def __init__(self, raw: io.RawIOBase, source: VolumeSource) -> None:
        super().__init__()
        self._raw = raw
        self._source = source

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._raw.seekable()

    def fileno(self) -> int:
        return self._raw.fileno()

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        got = self._raw.readinto(buffer) or 0
        self._source.count(got)
        return got

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        data = self._raw.read(size) or b""
        self._source.count(len(data))
        while 0 < len(data) < size:  # a short read before the end of the file
            more = self._raw.read(size - len(data)) or b""
            if not more:
                break
            self._source.count(len(more))
            data += more
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


@dataclass(frozen=True)
class VolumeFile:
    """One file of a volume, to be read by imgbuild/discs/readahead.py."""

    source: VolumeSource
    relative: str

    def open(self) -> BinaryIO:
        return self.source.open(self.relative)

    def __str__(self) -> str:
        return self.source.shown(self.relative)
