"""Write a set's volumes: layer streams cut into parts, hashed as they are written, volumes filled to size.

Space is counted the way a disc spends it: every file rounded up to 2,048-byte sectors plus one sector
for its directory entry, and ``metadata_reserve`` bytes per volume stay free for the files written last
(configs, restore.sh, README.txt, the manifest, SHA256SUMS). Volumes are written as ``FOLDER.partial``
and parts as ``NAME.partial`` (fsynced, then renamed); archive writes the metadata and the catalog copy, and
only then ``publish`` gives the volume folders their final names.

A layer's diff id is only known at its end; when it turns out to be a layer the set already holds, the
layer writer is aborted: its parts are deleted and the volumes rewound as if it had never been written.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from imgbuild.foundation.atomicfile import disk_errors, fsync_dir, write_file_atomic
from imgbuild.foundation.errors import ArchiveError
from imgbuild.setformat import layout
from imgbuild.setformat.blockhash import BlockHasher
from imgbuild.setformat.manifest import FileEntry, Part

SECTOR = 2048
MIB = 1024 * 1024
# Start the disk write-back every this many bytes, so the fsync that closes a part has little left to
# wait for: fsync of a whole 2 GiB part at once stalls the pipeline (and the engine's save) for seconds.
WRITEBACK_EVERY = 16 * MIB
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range():  # Linux only; elsewhere write-back simply starts at fsync
    try:
        # The process's own symbols, libc's among them: ctypes.util.find_library would run ldconfig (0.3 s
        # at every command's start).
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk without waiting for it (ctypes drops the GIL)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def file_cost(size: int) -> int:
    """Bytes a file takes on a disc: sectors of data plus one sector of directory entry (generous)."""
    return -(-size // SECTOR) * SECTOR + SECTOR


def metadata_reserve(capacity: int) -> int:
    return min(max(capacity // 64, MIB), 16 * MIB)



@dataclass
class VolumeState:
    number: int
    staging: Path
    used: int = 0
    files: list[FileEntry] = field(default_factory=list)


class VolumeWriter:
    def __init__(self, out: Path, set_id: str, capacity: int) -> None:
        self.out = out
        self.set_id = set_id
        self.capacity = capacity
        self.usable = capacity - metadata_reserve(capacity)
        # A part shorter than this is not started at the end of a volume; the next volume gets it.
        self.min_part = min(MIB, max(self.usable // 16, SECTOR))
        if self.usable < self.min_part + 2 * SECTOR:
            raise ArchiveError(f"a media size of {capacity} bytes leaves no room for data after the "
                               f"{metadata_reserve(capacity)} bytes kept for each volume's metadata")
        self.volumes: list[VolumeState] = []

    def staging_folder(self, number: int) -> Path:
        return layout.partial(self.out / layout.volume_folder(self.set_id, number))

    def open_volume(self) -> VolumeState:
        number = len(self.volumes) + 1
        if number > layout.MAX_VOLUMES:
            raise ArchiveError(f"the set needs more than {layout.MAX_VOLUMES} volumes; choose larger media")
        staging = self.staging_folder(number)
        with disk_errors(staging):
            (staging / layout.BLOBS_DIR).mkdir(parents=True)
        volume = VolumeState(number, staging)
        self.volumes.append(volume)
        return volume

    def layer(self, layer_number: int) -> "LayerWriter":
        if not self.volumes:
            self.open_volume()
        return LayerWriter(self, layer_number)

    def add_file(self, volume: VolumeState, relative: str, data: bytes) -> FileEntry:
        """Write a small file (metadata) into a volume and list it."""
        write_file_atomic(volume.staging / relative, data)
        hasher = BlockHasher()
        hasher.update(data)
        entry = FileEntry(path=relative, size=len(data), sha256=hasher.hexdigest(), blocks=hasher.block_hexdigests())
        volume.files.append(entry)
        volume.used += file_cost(len(data))
        return entry

    def check_capacity(self, metadata_sizes: list[int]) -> None:
        """After metadata: every volume, with its manifest and SHA256SUMS, must fit the media."""
        for volume, extra in zip(self.volumes, metadata_sizes):
            total = volume.used + extra
            if total > self.capacity:
                raise ArchiveError(
                    f"volume {volume.number} would need {total} bytes, more than the media's {self.capacity}: "
                    f"its metadata outgrew the {metadata_reserve(self.capacity)} bytes kept for it")

    def publish(self) -> list[Path]:
        """Give the finished staging folders their final names (the last step of a set)."""
        finals = []
        for volume in self.volumes:
            final = self.out / layout.volume_folder(self.set_id, volume.number)
            for sub in (volume.staging / layout.BLOBS_DIR, volume.staging / layout.IMAGES_DIR,
                        volume.staging / layout.PARITY_DIR, volume.staging):
                if sub.is_dir():  # a parity volume has parity/ instead of blobs/ and images/
                    fsync_dir(sub)
            with disk_errors(final):
                os.replace(volume.staging, final)
            finals.append(final)
        fsync_dir(self.out)
        return finals


def _write_all(fh: "io.FileIO", data: memoryview) -> None:
    while data:
        written = fh.write(data)
        data = data[written or 0:]


class LayerWriter:
    """A file-like sink for one layer's zstd stream; cuts it into parts across volumes."""

    def __init__(self, volumes: VolumeWriter, layer_number: int) -> None:
        self._v = volumes
        self._layer = layer_number
        last = volumes.volumes[-1]
        self._rewind = (len(volumes.volumes), last.used, len(last.files))
        self.parts: list[Part] = []
        self.size = 0
        # The whole stream's sha256 is the first part's when there is one part (nearly always), so it is
        # only computed from the second part on, starting from the first part's hash state: one pass less.
        self._stream_sha: "hashlib._Hash | None" = None
        self._fh = None
        self._written: list[Path] = []

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._fh is None:
                self._start_part()
            n = min(len(view), self._limit - self._part_size)
            with disk_errors(self._path):
                _write_all(self._fh, view[:n])
            self._part_sha.update(view[:n])
            if self._stream_sha is not None:
                self._stream_sha.update(view[:n])
            self._part_size += n
            view = view[n:]
            if self._part_size - self._synced >= WRITEBACK_EVERY:
                start_writeback(self._fh.fileno(), self._synced, self._part_size - self._synced)
                self._synced = self._part_size
            if self._part_size == self._limit:
                self._close_part()
        self.size += len(data)
        return len(data)

    def _start_part(self) -> None:
        number = len(self.parts) + 1
        if number > layout.MAX_PARTS_PER_LAYER:
            raise ArchiveError(f"layer {self._layer} needs more than {layout.MAX_PARTS_PER_LAYER} parts")
        volume = self._v.volumes[-1]
        room = (self._v.usable - volume.used - SECTOR) // SECTOR * SECTOR
        if room < self._v.min_part:
            volume = self._v.open_volume()
            room = (self._v.usable - volume.used - SECTOR) // SECTOR * SECTOR
        self._volume = volume
        self._limit = min(layout.MAX_PART_SIZE, room)
        self._relative = layout.part_path(self._layer, number)
        self._path = volume.staging / self._relative
        self._written.append(self._path)
        self._part_sha = BlockHasher()  # whole-part sha256 and per-block hashes (format 2)
        self._part_size = 0
        self._synced = 0
        with disk_errors(self._path):
            # Unbuffered: zstd hands over output in large pieces; a buffer would only add a copy.
            self._fh = open(layout.partial(self._path), "wb", buffering=0)

    def _close_part(self) -> None:
        assert self._fh is not None
        with disk_errors(self._path):
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(layout.partial(self._path), self._path)
        self._fh = None
        digest = self._part_sha.hexdigest()
        offset = sum(part.size for part in self.parts)
        self.parts.append(Part(path=self._relative, volume=self._volume.number, offset=offset,
                               size=self._part_size, sha256=digest))
        self._volume.files.append(FileEntry(path=self._relative, size=self._part_size, sha256=digest,
                                            blocks=self._part_sha.block_hexdigests()))
        self._volume.used += file_cost(self._part_size)
        if len(self.parts) == 1:
            self._stream_sha = self._part_sha.whole_copy()

    def commit(self) -> tuple[list[Part], int, str]:
        """Close the last part: (parts, compressed size, sha256 of the whole stream)."""
        if self._fh is not None:
            self._close_part()
        if len(self.parts) == 1:
            return self.parts, self.size, self.parts[0].sha256
        assert self._stream_sha is not None
        return self.parts, self.size, self._stream_sha.hexdigest()

    def abort(self) -> None:
        """Remove everything this layer wrote and rewind the volumes (a duplicate or a failure)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for path in self._written:
            for candidate in (path, layout.partial(path)):
                candidate.unlink(missing_ok=True)
        count, used, files = self._rewind
        for volume in self._v.volumes[count:]:
            shutil.rmtree(volume.staging, ignore_errors=True)
        del self._v.volumes[count:]
        last = self._v.volumes[-1]
        last.used = used
        del last.files[files:]
