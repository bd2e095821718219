"""`imgbuild repair DIR... --out DIR`: rebuild the damaged or missing volumes of a set, then verify them.

1. locate the set once; a volume not found is built in OUT while verify reads the others (their bytes are
   what it is made of, imgbuild/parity/accumulate.py);
2. verify the volumes given (folders or .iso images) and take the damage, located to the block in verify's
   one read of each disc (imgbuild.parity.damage); refuse, naming the stretches, when more than M volumes
   are bad at the same place;
3. for each other volume to rebuild, write OUT/<folder> (as ``.partial`` first): intact files are copied (and
   hashed on the way), intact blocks of damaged files are copied, and every bad stretch not built in step 1
   is decoded from N good volumes (data volumes first, so a lost parity volume costs no decoding); a parity
   volume's README.txt is generated again; the manifest is the trusted one and SHA256SUMS is made from it;
4. verify the rebuilt volumes, and with ``iso`` write an ISO image of each.

Only the volumes that need it are written: the rest of the set stays where it is, and load or verify take
the original folders plus OUT together.

Reads: every disc is read once, in full, by verify. Damage on a disc is known only once that disc was read,
so while verify reads a volume its bytes are also written to a copy under OUT; the copy is dropped as soon as
the volume's last file checks out, and kept when one does not: rebuilding that volume then takes its intact
bytes from the copy, not from the disc (extra local disk: the volume being read, plus the damaged ones). A
bad block is decoded from the same stretch of N other volumes, read from their discs again at those offsets
only: a block or so of each, not the whole disc.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from imgbuild.discs.iso import make_volume_isos
from imgbuild.discs.locate import LocatedSet, locate_set
from imgbuild.discs.sources import VolumeSource
from imgbuild.foundation.atomicfile import disk_errors, fsync_dir, write_file_atomic
from imgbuild.foundation.errors import ArchiveError, ChecksumMismatch, Remedy
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent, no_progress
from imgbuild.parity import erasure
from imgbuild.parity.accumulate import LostStreams, xor_bytes
from imgbuild.parity.damage import DamagedFile, Recovery, Stretch, assess, describe, file_offsets, pick_sources
from imgbuild.parity.volumes import check_parity, parity_readme, payload_files, segments
from imgbuild.restore.verify import VerifyOptions, VerifyReport, verify_located, verify_set
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import FileEntry, SetManifest, Volume
from imgbuild.setformat.volume_files import format_doc, sums_file

COPY_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class RepairOptions:
    out: Path
    catalog: Path | None = None
    iso: bool = False
    set_id: str | None = None  # which set, when the folders hold volumes of several
    chunk_size: int = erasure.CHUNK


@dataclass(frozen=True)
class RepairResult:
    set_id: str
    name: str
    recovery: Recovery
    rebuilt: tuple[Path, ...]
    isos: tuple[Path, ...]
    bytes_decoded: int
    bytes_copied: int
    seconds: float
    decode_seconds: float
    check: VerifyReport | None = field(default=None, repr=False)
    # The verification of the volumes given (its bytes_read: what that read of each disc took).
    verified: VerifyReport | None = field(default=None, repr=False)
    bytes_read: tuple[tuple[int, int], ...] = ()  # (volume, bytes read from it) by the whole repair

    @property
    def decode_throughput(self) -> float:
        return self.bytes_decoded / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"set_id": self.set_id, "name": self.name, "recovery": self.recovery.to_json(),
                "rebuilt": [str(p) for p in self.rebuilt], "isos": [str(p) for p in self.isos],
                "bytes_decoded": self.bytes_decoded, "bytes_copied": self.bytes_copied,
                "seconds": round(self.seconds, 3), "decode_bytes_per_second": round(self.decode_throughput),
                "check": self.check.to_json() if self.check else None,
                "bytes_read": {str(number): size for number, size in self.bytes_read}}


def repair_set(dirs: Sequence[Path], options: RepairOptions, progress: ProgressCallback = no_progress) -> RepairResult:
    """Rebuild what is damaged or missing in the set under ``dirs`` into ``options.out``."""
    return repair_located(locate_set(dirs, options.catalog, options.set_id), options, progress)


def repair_located(located: LocatedSet, options: RepairOptions,
                   progress: ProgressCallback = no_progress) -> RepairResult:
    """Rebuild what is damaged or missing in a located set into ``options.out``."""
    started = time.monotonic()
    manifest = located.manifest
    check_parity(manifest)
    rebuild = _Rebuild(manifest, located.volumes, options, progress)
    # Any OS error while writing (read-only or full file system, ...) names OUT or the file; the staging
    # folders are removed, so nothing half-written stays under a volume's name.
    try:
        lost = _lost_before(manifest, located)
        streams = None
        verify_progress = progress
        if lost:  # built up while verify reads the other volumes (imgbuild/parity/accumulate.py)
            with disk_errors(options.out):
                rebuild.stage(lost, ())
            streams = LostStreams(manifest, lost, rebuild.xor_at)
            verify_progress = _renamed(progress, "verify", "repair: verify and rebuild")
        with disk_errors(options.out):
            rebuild.keep_while_verifying()

        def on_chunk(volume: int, relative: str, offset: int, data: bytes) -> None:
            rebuild.kept.write(volume, relative, offset, data)
            if streams is not None:
                streams.feed(volume, relative, offset, data)

        verify_options = VerifyOptions(catalog=options.catalog, set_id=options.set_id, on_chunk=on_chunk,
                                       on_file_end=rebuild.kept.file_end)
        with disk_errors(options.out):
            report = verify_located(located, verify_options, verify_progress)
            rebuild.kept.close()
        recovery = report.recovery or assess(manifest, located.volumes, ())
        if not recovery.targets:
            rebuild.discard()
            return RepairResult(manifest.set_id, manifest.name, recovery, (), (), 0, 0, 0.0, 0.0, verified=report,
                                bytes_read=report.bytes_read)
        if not recovery.recoverable:
            raise ArchiveError("the set cannot be repaired: " + "; ".join(describe(recovery)[-1:]),
                               hint="verify lists each damaged file and block")
        with disk_errors(options.out):
            rebuild.stage([t for t in recovery.targets if t not in lost], recovery.damaged)
            decode_seconds = rebuild.decode(recovery.stretches, set(lost))
            decode_seconds += streams.seconds if streams else 0.0
            finals = rebuild.finish(located.manifest_bytes)
            rebuild.kept.discard()
    except BaseException:
        rebuild.discard()
        raise
    check = verify_set(finals, VerifyOptions(catalog=options.catalog, set_id=options.set_id))
    if not check.ok:
        first = check.problems[0]
        raise ArchiveError(f"the rebuilt volumes do not verify: {first.path}: {first.detail}")
    isos: tuple[Path, ...] = ()
    if options.iso:
        with disk_errors(options.out):
            made = make_volume_isos(options.out, manifest.set_id,
                                    [(t, manifest.volume(t).folder) for t in recovery.targets])
        isos = tuple(image.path for image in made)
    return RepairResult(manifest.set_id, manifest.name, recovery, tuple(finals), isos, rebuild.decoded,
                        rebuild.copied, time.monotonic() - started, decode_seconds, check, report,
                        tuple(located.bytes_read().items()))


def _renamed(progress: ProgressCallback, task: str, shown: str) -> ProgressCallback:
    """``progress`` with the events of ``task`` shown as ``shown``."""
    return lambda event: progress(dataclasses.replace(event, task=shown) if event.task == task else event)


def _lost_before(manifest: SetManifest, located: LocatedSet) -> list[int]:
    """The volumes not found, when the parity volumes can rebuild them all (else there is nothing to build)."""
    missing = located.missing()
    parity = manifest.parity
    return missing if parity is not None and 0 < len(missing) <= parity.parity_volumes else []


class _Rebuild:
    """The target volumes' files being written: lost volumes built up while the others are verified, copies
    of intact content, then the stretches decoded from N volumes patched in."""

    def __init__(self, manifest: SetManifest, volumes: dict[int, VolumeSource], options: RepairOptions,
                 progress: ProgressCallback) -> None:
        self.manifest = manifest
        self.volumes = volumes
        self.options = options
        self.progress = progress
        self.damaged: dict[tuple[int, str], DamagedFile] = {}
        self.staging: dict[int, Path] = {}
        self.writers: dict[int, _StreamWriter] = {}
        self.fds: dict[tuple[int, str], int] = {}
        self.created_out = False
        self.kept = _KeptCopies(manifest, layout.partial(options.out / ".verified-volumes"))
        self.copied = 0
        self.decoded = 0

    def keep_while_verifying(self) -> None:
        """Make OUT (if need be) for the copies verify's read leaves of damaged volumes."""
        if not self.options.out.exists():
            self.options.out.mkdir(parents=True)
            self.created_out = True

    def stage(self, numbers: Sequence[int], damaged: Sequence[DamagedFile]) -> None:
        """Create every file of the volumes ``numbers``: intact content copied, the rest left as zeros to be
        filled in."""
        if numbers and not self.options.out.exists():
            self.options.out.mkdir(parents=True)
            self.created_out = True
        self.damaged.update({(d.volume, d.path): d for d in damaged})
        for number in numbers:
            volume = self.manifest.volume(number)
            staging = layout.partial(self.options.out / volume.folder)
            final = self.options.out / volume.folder
            if final.exists():
                raise ArchiveError(f"{final} already exists; repair writes only into new folders",
                                   hint="remove the old repair", remedy=Remedy.OTHER_OUT)
            shutil.rmtree(staging, ignore_errors=True)
            self.staging[number] = staging
            opener = self.volumes[number].open if number in self.volumes else None
            if opener is not None:
                opener = self.kept.opener(number, opener)
            for entry in volume.files:
                path = staging / entry.path
                with disk_errors(path):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(layout.partial(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                self.fds[(number, entry.path)] = fd
                with disk_errors(path):
                    os.ftruncate(fd, entry.size)
                damaged_file = self.damaged.get((number, entry.path))
                if opener is None:
                    continue
                if damaged_file is None:
                    self._copy_whole(opener, entry, fd)
                else:
                    self._copy_good_blocks(opener, entry, fd, set(damaged_file.bad_blocks))
            self.writers[number] = _StreamWriter(volume, self.fds)

    def xor_at(self, number: int, offset: int, data: bytes) -> None:
        with disk_errors(self.staging[number]):
            self.writers[number].xor_at(offset, data)

    def _copy_whole(self, opener: erasure.Opener, entry: FileEntry, fd: int) -> None:
        hasher = hashlib.sha256()
        with opener(entry.path) as src:
            offset = 0
            while chunk := src.read(COPY_CHUNK):
                hasher.update(chunk)
                os.pwrite(fd, chunk, offset)
                offset += len(chunk)
        if offset != entry.size or hasher.hexdigest() != entry.sha256:
            raise ChecksumMismatch(entry.path, entry.sha256, hasher.hexdigest(), what="sha256 (changed while repairing)")
        self.copied += offset

    def _copy_good_blocks(self, opener: erasure.Opener, entry: FileEntry, fd: int, bad: set[int]) -> None:
        block = self.manifest.block_size
        if not block:
            return
        try:
            src = opener(entry.path)
        except (OSError, ArchiveError):
            return
        with src:
            for index in range(-(-entry.size // block)):
                if index in bad:
                    continue
                src.seek(index * block)
                data = src.read(min(block, entry.size - index * block))
                os.pwrite(fd, data, index * block)
                self.copied += len(data)

    def decode(self, stretches: Sequence[Stretch], built: set[int]) -> float:
        """Decode each bad stretch from N good volumes and write it into the target files; a stretch where only
        volumes in ``built`` are bad was built already, while they were verified."""
        parity = self.manifest.parity
        for stretch in stretches:
            if stretch.bad <= built:
                self.decoded += (stretch.end - stretch.start) * len(stretch.bad)
        stretches = [s for s in stretches if not s.bad <= built]
        if not stretches:
            return 0.0
        assert parity is not None
        n, m = parity.data_volumes, parity.parity_volumes
        streams = {v.number: erasure.PayloadStream(segments(v), self._source_opener(v.number))
                   for v in self.manifest.volumes}
        total = sum(s.end - s.start for s in stretches)
        done = 0
        seconds = 0.0
        try:
            for stretch in stretches:
                sources = pick_sources(self.manifest, stretch.bad)
                pieces = list(erasure.chunks(stretch.end, self.options.chunk_size, stretch.start))
                blocks = erasure.read_ahead([streams[v] for v in sources], pieces)
                for (offset, size), read in zip(pieces, blocks):
                    have = {v - 1: block for v, block in zip(sources, read)}
                    tick = time.monotonic()
                    out = erasure.rebuild(n, m, have, [v - 1 for v in sorted(stretch.bad)])
                    seconds += time.monotonic() - tick
                    for v in stretch.bad:
                        self.writers[v].write_at(offset, out[v - 1])
                    done += size
                    self.decoded += size * len(stretch.bad)
                    self.progress(ProgressEvent(task="repair: decode", done=done, total=total))
        finally:
            for stream in streams.values():
                stream.close()
        self.progress(ProgressEvent(task="repair: decode", done=done, total=total, finished=True))
        return seconds

    def _source_opener(self, number: int) -> erasure.Opener:
        if number in self.volumes:
            return self.volumes[number].open

        def lost(name: str) -> BinaryIO:
            raise ArchiveError(f"volume {number} is missing; {name} cannot be read from it")

        return lost

    def finish(self, manifest_bytes: bytes) -> list[Path]:
        """Check every rebuilt file against the manifest, give it its name, add manifest and SHA256SUMS."""
        finals = []
        manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
        for number, staging in self.staging.items():
            volume = self.manifest.volume(number)
            for entry in volume.files:
                if volume.role == "parity" and entry.path == layout.README_NAME:
                    os.pwrite(self.fds[(number, entry.path)], parity_readme(self.manifest, number), 0)
                if volume.role == "parity" and entry.path == layout.FORMAT_DOC_NAME and (
                        (number, entry.path) in self.damaged or number not in self.volumes):
                    os.pwrite(self.fds[(number, entry.path)], self._format_doc(entry), 0)
                self._seal(staging, number, entry)
            write_file_atomic(staging / layout.MANIFEST_NAME, manifest_bytes)
            write_file_atomic(staging / layout.SUMS_NAME, sums_file(volume.files, manifest_sha))
            for sub in sorted({p.parent for p in staging.rglob("*") if p.is_file()}, reverse=True):
                fsync_dir(sub)
            final = staging.with_name(staging.name.removesuffix(layout.PARTIAL_SUFFIX))
            with disk_errors(final):
                os.replace(staging, final)
            finals.append(final)
        fsync_dir(self.options.out)
        return finals

    def _format_doc(self, entry: FileEntry) -> bytes:
        """A parity volume's FORMAT.md is in no payload stream: the copy on another volume, or this imgbuild's
        own when it is the same text (_seal checks the sha256 either way)."""
        for source in self.volumes.values():
            try:
                data = source.read_small(layout.FORMAT_DOC_NAME, entry.size)
            except ArchiveError:
                continue
            if hashlib.sha256(data).hexdigest() == entry.sha256:
                return data
        return format_doc()

    def _seal(self, staging: Path, number: int, entry: FileEntry) -> None:
        fd = self.fds.pop((number, entry.path))
        hasher = hashlib.sha256()
        offset = 0
        try:
            while offset < entry.size:
                chunk = os.pread(fd, min(COPY_CHUNK, entry.size - offset), offset)
                hasher.update(chunk)
                offset += len(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        path = staging / entry.path
        if hasher.hexdigest() != entry.sha256:
            raise ChecksumMismatch(str(path), entry.sha256, hasher.hexdigest(), what="sha256 of the rebuilt file")
        os.replace(layout.partial(path), path)

    def discard(self) -> None:
        self.kept.discard()
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        for staging in self.staging.values():
            shutil.rmtree(staging, ignore_errors=True)
        if self.created_out:  # a failed repair leaves no OUT behind that it made
            shutil.rmtree(self.options.out, ignore_errors=True)


class _KeptCopies:
    """Copies of the volumes verify reads, written as it reads them; a volume's copy is dropped once all its
    files checked out, and kept when one did not, so rebuilding a damaged volume does not read its disc again.
    At most the volume being read and the damaged ones are on local disk at a time."""

    def __init__(self, manifest: SetManifest, root: Path) -> None:
        self.manifest = manifest
        self.root = root
        self.current: int | None = None
        self.fds: dict[str, int] = {}
        self.damaged: set[int] = set()  # volumes with a file that did not check out: their copies stay

    def write(self, volume: int, relative: str, offset: int, data: bytes) -> None:
        if volume != self.current:
            self._finish_current()
            self.current = volume
        fd = self.fds.get(relative)
        if fd is None:
            path = self.root / self.manifest.volume(volume).folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = self.fds[relative] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.pwrite(fd, data, offset)

    def file_end(self, volume: int, relative: str, ok: bool) -> None:
        if not ok:
            self.damaged.add(volume)

    def close(self) -> None:
        """After verify: the last volume read is kept or dropped like the others."""
        self._finish_current()
        self.current = None

    def opener(self, number: int, disc: erasure.Opener) -> erasure.Opener:
        """Opens a file of volume ``number`` from its copy when verify left one, else from ``disc``."""
        folder = self.root / self.manifest.volume(number).folder

        def open_copy(relative: str) -> BinaryIO:
            copy = folder / relative
            return open(copy, "rb") if number in self.damaged and copy.is_file() else disc(relative)

        return open_copy

    def discard(self) -> None:
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def _finish_current(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        if self.current is not None and self.current not in self.damaged:
            shutil.rmtree(self.root / self.manifest.volume(self.current).folder, ignore_errors=True)


class _StreamWriter:
    """Writes bytes of a volume's payload stream into its files (open ``.partial`` fds) at the right place."""

    def __init__(self, volume: Volume, fds: dict[tuple[int, str], int]) -> None:
        self.number = volume.number
        starts = file_offsets(volume)
        self.files = [(starts[entry.path], entry) for entry in payload_files(volume)]
        self.fds = fds

    def write_at(self, offset: int, data: bytes) -> None:
        for fd, at, piece in self._pieces(offset, data):
            os.pwrite(fd, piece, at)

    def xor_at(self, offset: int, data: bytes) -> None:
        """XOR ``data`` into what the files hold there (a lost volume built up source by source)."""
        for fd, at, piece in self._pieces(offset, data):
            os.pwrite(fd, xor_bytes(os.pread(fd, len(piece), at), piece), at)

    def _pieces(self, offset: int, data: bytes) -> Iterator[tuple[int, int, bytes]]:
        """(file descriptor, offset in the file, bytes) for each file ``data`` at stream ``offset`` falls in."""
        end = offset + len(data)
        for start, entry in self.files:
            lo, hi = max(offset, start), min(end, start + entry.size)
            if lo < hi:
                yield self.fds[(self.number, entry.path)], lo - start, data[lo - offset:hi - offset]
