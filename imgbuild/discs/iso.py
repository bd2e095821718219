"""Burnable ISO images of volumes, and reading a volume straight from its .iso file without mounting it.

Writing uses xorriso (Debian package `xorriso`): ISO 9660 level 3 + Joliet (long names, what Windows shows)
+ rationalized Rock Ridge (POSIX names and modes, what Linux shows). Reading uses pycdlib, a pure-Python ISO
parser, only to learn where each file's extent lies; the bytes are then read with os.pread straight from the
.iso file, so a 23 GB image streams without loading anything into memory and without root or a mount.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from imgbuild.discs.sources import EntryType, Listing, VolumeSource
from imgbuild.foundation.errors import ArchiveError, FileFault, VolumeFileError

ISO_SUFFIX = ".iso"
SECTOR = 2048
# ISO 9660 allows 32 d-characters in the volume identifier; Joliet keeps only the first 16 (UCS-2), and
# Windows shows the Joliet one, so the volume number must sit inside the first 16 characters.
LABEL_MAX = 32
JOLIET_LABEL_MAX = 16


def volume_label(set_id: str, volume: int) -> str:
    """The disc label of a volume: ``V<kkk>_<set id>`` in d-characters (A-Z, 0-9, _), at most 32 characters.

    The volume number comes first so that the 16 characters Joliet keeps still say which disc it is.
    """
    if volume < 1:
        raise ValueError(f"volume numbers start at 1, got {volume}")
    head = f"V{volume:03d}_"
    sid = re.sub(r"[^A-Z0-9_]", "_", set_id.upper()).strip("_") or "IMGBUILD"
    return (head + sid)[:LABEL_MAX]


@dataclass(frozen=True)
class IsoImage:
    """One ISO image written from one volume folder."""

    path: Path
    label: str
    size: int

    def to_json(self) -> dict[str, object]:
        return {"path": str(self.path), "label": self.label, "size": self.size}


def xorriso_path() -> str:
    found = shutil.which("xorriso")
    if found is None:
        raise ArchiveError("xorriso is not installed; ISO images need it", hint="apt-get install xorriso")
    return found


def make_iso(volume_dir: Path, iso_path: Path, label: str) -> IsoImage:
    """Write ``iso_path`` from the files of ``volume_dir`` (via ``NAME.partial``, fsync, rename)."""
    if len(label) > LABEL_MAX or not re.fullmatch(r"[A-Z0-9_]+", label):
        raise ArchiveError(f"ISO volume label {label!r} is not 1-32 d-characters (A-Z, 0-9, _)")
    partial = iso_path.with_name(iso_path.name + ".partial")
    partial.unlink(missing_ok=True)
    cmd = [xorriso_path(), "-as", "mkisofs", "-quiet", "-iso-level", "3", "-J", "-joliet-long", "-r",
           "-V", label, "-o", str(partial), str(volume_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ArchiveError(f"xorriso could not write {iso_path}: " + " | ".join(tail))
    with open(partial, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(partial, iso_path)
    return IsoImage(path=iso_path, label=label, size=iso_path.stat().st_size)


@dataclass(frozen=True)
class IsoEntry:
    """Where one regular file of an ISO image lies: ``offset`` bytes into the .iso, ``size`` bytes long."""

    name: str
    offset: int
    size: int


class ExtentReader(io.RawIOBase):
    """A read-only, seekable file object over one extent of an .iso file (pread: no shared file position)."""

    def __init__(self, iso_path: Path, entry: IsoEntry) -> None:
        super().__init__()
        self._fd = os.open(iso_path, os.O_RDONLY)
        self._entry = entry
        self._pos = 0
        self.name = f"{iso_path}:{entry.name}"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._entry.size - self._pos)
        got = 0
        while got < want:
            chunk = os.preadv(self._fd, [view[got:want]], self._entry.offset + self._pos + got)
            if chunk == 0:
                raise ArchiveError(f"{self.name}: the .iso file ends inside this file's extent (truncated image?)")
            got += chunk
        self._pos += got
        return got

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._entry.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class IsoVolume(VolumeSource):
    """A volume read from its .iso image: the regular files by their Rock Ridge path (Joliet, then ISO 9660
    as fallbacks), each read from its extent of the image."""

    def __init__(self, path: Path) -> None:
        import pycdlib  # imported here: only ISO users pay for it

        super().__init__(Path(path), volume_name(Path(path)))
        self.path = self.location
        iso_size = self.path.stat().st_size
        iso = pycdlib.PyCdlib()
        try:
            with open(self.path, "rb") as fh:
                iso.open_fp(fh)
                try:
                    self.label = iso.pvd.volume_identifier.decode("ascii", "replace").rstrip()
                    declared = iso.pvd.space_size * iso.pvd.logical_block_size()
                    self.files, self.dirs = _index(iso)
                finally:
                    iso.close()
        except pycdlib.pycdlibexception.PyCdlibException as exc:
            raise ArchiveError(f"{self.path}: not a readable ISO 9660 image: {exc}") from exc
        # pycdlib quietly shortens files that run past the end of a truncated image: compare with the size
        # the image declares instead.
        if iso_size < declared:
            raise ArchiveError(f"{self.path}: {iso_size} bytes, but the image declares {declared}: truncated")
        for entry in self.files.values():
            if entry.size < 0 or entry.offset + entry.size > iso_size:
                raise ArchiveError(f"{self.path}: {entry.name} lies beyond the end of the image (truncated?)")

    def _entry(self, relative: str) -> IsoEntry:
        entry = self.files.get(relative)
        if entry is None:
            raise VolumeFileError(str(self.path), relative, FileFault.MISSING, "no such file in the image")
        return entry

    def size(self, relative: str) -> int:
        return self._entry(relative).size

    def _open_raw(self, relative: str) -> io.RawIOBase:
        return ExtentReader(self.path, self._entry(relative))

    def list(self) -> Listing:
        entries = {name: EntryType.FOLDER for name in self.dirs}
        entries.update({name: EntryType.FILE for name in self.files})
        return Listing(dict(sorted(entries.items())), {name: e.size for name, e in self.files.items()})


def _index(iso: object) -> tuple[dict[str, IsoEntry], set[str]]:
    """Walk the image's tree and note each regular file's extent; refuse what our volumes never contain."""
    facade = "rr_path" if iso.has_rock_ridge() else ("joliet_path" if iso.has_joliet() else "iso_path")  # type: ignore[attr-defined]
    files: dict[str, IsoEntry] = {}
    dirs: set[str] = set()
    for dirname, _dirs, names in iso.walk(**{facade: "/"}):  # type: ignore[attr-defined]
        if dirname != "/":
            dirs.add(dirname.strip("/"))
        for name in names:
            full = f"{dirname.rstrip('/')}/{name}"
            record = iso.get_record(**{facade: full})  # type: ignore[attr-defined]
            if facade == "rr_path" and record.rock_ridge is not None and record.rock_ridge.is_symlink():
                raise ArchiveError(f"{full}: symbolic link in an ISO volume (imgbuild never writes one)")
            if record.file_flags & (1 << record.FILE_FLAG_MULTI_EXTENT_BIT):
                raise ArchiveError(f"{full}: multi-extent file (over 4 GiB) in an ISO volume")
            rel = full.lstrip("/")
            if facade == "iso_path":
                rel = rel.split(";")[0]
            files[rel] = IsoEntry(name=rel, offset=record.extent_location() * SECTOR, size=record.get_data_length())
    return files, dirs


def is_iso(path: Path) -> bool:
    """True for a regular file named ``*.iso``: verify, load and repair read such a file as one volume."""
    return path.suffix.lower() == ISO_SUFFIX and path.is_file()


def make_volume_isos(out: Path, set_id: str, volumes: list[tuple[int, str]], reuse: bool = False) -> list[IsoImage]:
    """``OUT/<folder>.iso`` for each (number, folder) volume; ``reuse`` keeps images already there.

    An image is written whole or not at all (``.partial``, fsync, rename), so an existing one is complete;
    archive reuses them only for a set it found complete, whose folders are the ones the images were made of.
    """
    images = []
    for number, folder in volumes:
        path = out / (folder + ISO_SUFFIX)
        label = volume_label(set_id, number)
        if reuse and path.is_file():
            images.append(IsoImage(path=path, label=label, size=path.stat().st_size))
        else:
            images.append(make_iso(out / folder, path, label))
    return images


def volume_name(path: Path) -> str:
    """The volume folder name a folder or an .iso image stands for (``X-vol001.iso`` -> ``X-vol001``)."""
    return path.name[: -len(ISO_SUFFIX)] if is_iso(path) else path.name
