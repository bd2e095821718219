"""Strict verification of a set's volumes against the trusted manifest and each volume's SHA256SUMS.

Strict both ways: every file the manifest lists must be present with its size and sha256, and every file
present must be listed; SHA256SUMS must say exactly what the manifest says; each volume's manifest copy
must be the trusted one. Missing volumes are named and the others are still checked.

Each volume's files are read front to back in the manifest's order (the order they were written, which is the
on-disc order an optical drive reads without seeking) by a reader thread, and hashed by a second thread
(imgbuild.discs.readahead), block by block as well when the manifest lists block hashes: a damaged file is
located to the block in the same read, so the damage assessment (imgbuild.parity.damage) reads nothing
again. Every disc is read once. ``deep`` also decompresses every layer whose parts are all present and
checks the layer's size and diff id; that work happens in the calling thread, a third stage.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zstandard

from imgbuild.discs.locate import LocatedSet, locate_set
from imgbuild.discs.problems import Problem, ProblemKind
from imgbuild.discs.readahead import CHUNK_SIZE, FileChunk, FileEnd, FileStart, HashedReadAhead
from imgbuild.discs.sources import EntryType, VolumeFile, VolumeSource
from imgbuild.foundation.errors import FileFault, VolumeFileError
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent, no_progress
from imgbuild.parity.damage import Recovery, assess
from imgbuild.restore.checks import record_check
from imgbuild.restore.layer_content import TarScanner, summarize
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import Layer, SetManifest


@dataclass(frozen=True)
class VerifyOptions:
    deep: bool = False
    catalog: Path | None = None
    set_id: str | None = None  # which set, when the folders hold volumes of several
    refuse_devices: bool = False  # with deep: device nodes in a layer are problems
    chunk_size: int = CHUNK_SIZE
    # A catalog folder: when it holds the set's manifest copy, this check is recorded beside it (imgbuild/restore/checks.py).
    record_in: Path | None = None
    # Called with (volume, file, offset, bytes) for every chunk read: repair builds lost volumes in the same read.
    on_chunk: Callable[[int, str, int, bytes], None] | None = None
    # Called with (volume, file, ok) when a file has been read to its end and checked.
    on_file_end: Callable[[int, str, bool], None] | None = None


@dataclass(frozen=True)
class VerifyReport:
    set_id: str
    name: str
    manifest_source: str
    volume_count: int
    volumes_checked: tuple[int, ...]
    volumes_missing: tuple[int, ...]
    volumes_not_given: tuple[int, ...]
    files_checked: int
    bytes_checked: int
    seconds: float
    deep: bool
    layers_checked: int
    problems: tuple[Problem, ...] = field(default=())
    # When something is wrong: the damaged blocks and whether parity can rebuild them (imgbuild.parity.damage).
    recovery: Recovery | None = None
    content: Any = None  # deep: imgbuild.restore.layer_content.ContentSummary of the layers decompressed
    recorded: str | None = None  # the catalog's check record this check was added to
    bytes_read: tuple[tuple[int, int], ...] = ()  # (volume, bytes read from it) by this command so far

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def throughput(self) -> float:
        """Bytes per second read and hashed."""
        return self.bytes_checked / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "set_id": self.set_id, "name": self.name, "manifest": self.manifest_source,
            "volume_count": self.volume_count, "volumes_checked": list(self.volumes_checked),
            "volumes_missing": list(self.volumes_missing), "volumes_not_given": list(self.volumes_not_given),
            "files_checked": self.files_checked, "bytes_checked": self.bytes_checked,
            "seconds": round(self.seconds, 3), "bytes_per_second": round(self.throughput),
            "deep": self.deep, "layers_checked": self.layers_checked,
            "problems": [p.to_json() for p in self.problems],
            "recovery": self.recovery.to_json() if self.recovery is not None else None,
            "content": self.content.to_json() if self.content is not None else None,
            "recorded": self.recorded,
            "bytes_read": {str(number): size for number, size in self.bytes_read},
        }


@dataclass(frozen=True)
class _Expected:
    """A file to read: where it is and what it must be; ``wrong_size`` when it is shorter than the manifest says
    (read all the same, to locate its good blocks)."""

    volume: int
    file: VolumeFile
    relative: str
    size: int
    sha256: str
    blocks: tuple[str, ...] | None
    wrong_size: str | None = None

    @property
    def shown(self) -> str:
        return str(self.file)


def verify_set(dirs: Sequence[Path], options: VerifyOptions = VerifyOptions(),
               progress: ProgressCallback = no_progress) -> VerifyReport:
    """Verify the volumes found under ``dirs``; problems are reported, not raised.

    Raises ManifestError when no trustworthy manifest exists (all copies hostile or unreadable).
    """
    return verify_located(locate_set(dirs, options.catalog, options.set_id), options, progress)


def verify_located(located: LocatedSet, options: VerifyOptions = VerifyOptions(),
                   progress: ProgressCallback = no_progress) -> VerifyReport:
    """Verify the volumes of a located set (``options.catalog`` and ``set_id`` were used to locate it)."""
    started = time.monotonic()
    manifest = located.manifest
    problems = [Problem(ProblemKind.FOLDER, f.folder, f.reason) for f in located.findings]
    missing = tuple(located.missing()) if located.whole_set_expected else ()
    not_given = () if located.whole_set_expected else tuple(located.missing())
    for number in missing:
        problems.append(Problem(ProblemKind.VOLUME_MISSING, manifest.volume(number).folder,
                                f"volume {number} of {manifest.volume_count} is missing", number))
    manifest_sha = hashlib.sha256(located.manifest_bytes).hexdigest()
    to_read: list[_Expected] = []
    for number, source in located.volumes.items():
        expected = _expected_files(manifest, number, manifest_sha)
        problems += _unexpected_entries(source, number, set(expected))
        problems += _check_sums(source, number, expected)
        for relative, entry in expected.items():
            item, problem = _precheck(source, number, relative, entry)
            if problem:
                problems.append(problem)
            if item:
                to_read.append(item)
    deep = _DeepCheck(manifest, located, options.refuse_devices) if options.deep else None
    files, total = _hash_files(to_read, problems, deep, options, manifest.block_size, progress)
    if deep is not None:
        problems += deep.problems
    recovery = assess(manifest, located.volumes, problems) if problems else None
    report = VerifyReport(
        set_id=manifest.set_id, name=manifest.name, manifest_source=located.manifest_source,
        volume_count=manifest.volume_count, volumes_checked=tuple(located.volumes),
        volumes_missing=missing, volumes_not_given=not_given, files_checked=files, bytes_checked=total,
        seconds=time.monotonic() - started, deep=options.deep,
        layers_checked=deep.layers_checked if deep else 0, problems=tuple(problems), recovery=recovery,
        content=summarize(deep.scanners) if deep else None, bytes_read=tuple(located.bytes_read().items()))
    if options.record_in is not None and layout.catalog_path(options.record_in, manifest.set_id).is_file():
        report = replace(report, recorded=str(record_check(options.record_in, report)))
    return report


@dataclass(frozen=True)
class _Listed:
    """What the manifest says of one file of a volume; the manifest copy's size is not recorded (None)."""

    size: int | None
    sha256: str
    blocks: tuple[str, ...] | None = None


def _expected_files(manifest: SetManifest, number: int, manifest_sha: str) -> dict[str, _Listed]:
    """Volume-relative path -> what it must be, in on-disc order."""
    files = {f.path: _Listed(f.size, f.sha256, tuple(f.blocks) if f.blocks is not None else None)
             for f in manifest.volume(number).files}
    files[layout.MANIFEST_NAME] = _Listed(None, manifest_sha)
    return files


def _unexpected_entries(source: VolumeSource, number: int, expected: set[str]) -> list[Problem]:
    """Files (and symlinks, and special files) on the volume that the manifest does not list."""
    allowed = expected | {layout.SUMS_NAME}
    allowed_dirs = {p.rsplit("/", i)[0] for p in allowed for i in range(1, p.count("/") + 1)}
    problems: list[Problem] = []
    for rel, kind in source.list().entries.items():
        parent = rel.rpartition("/")[0]
        if parent and parent not in allowed_dirs:
            continue  # inside a folder named already
        if kind is EntryType.SYMLINK and rel not in allowed:  # a listed one is named by _precheck
            problems.append(Problem(ProblemKind.SYMLINK, source.shown(rel), "a symbolic link, not listed", number))
        elif kind is EntryType.FOLDER and rel not in allowed_dirs:
            problems.append(Problem(ProblemKind.UNEXPECTED, source.shown(rel) + "/",
                                    "a folder the manifest does not list", number))
        elif kind in (EntryType.FILE, EntryType.OTHER) and rel not in allowed:
            problems.append(Problem(ProblemKind.UNEXPECTED, source.shown(rel), "a file the manifest does not list",
                                    number))
    return problems


def _check_sums(source: VolumeSource, number: int, expected: dict[str, _Listed]) -> list[Problem]:
    """SHA256SUMS must list exactly the expected files with exactly the manifest's hashes."""
    where = source.shown(layout.SUMS_NAME)
    try:
        text = source.read_small(layout.SUMS_NAME, layout.MAX_MANIFEST_BYTES).decode("utf-8")
    except VolumeFileError as exc:
        if exc.fault is FileFault.MISSING:
            return [Problem(ProblemKind.MISSING, where, "SHA256SUMS is missing", number, layout.SUMS_NAME)]
        return [Problem(ProblemKind.SUMS, where, str(exc), number, layout.SUMS_NAME)]
    except UnicodeDecodeError as exc:
        return [Problem(ProblemKind.SUMS, where, str(exc), number, layout.SUMS_NAME)]
    listed: dict[str, str] = {}
    problems: list[Problem] = []

    def bad(detail: str) -> None:
        problems.append(Problem(ProblemKind.SUMS, where, detail, number, layout.SUMS_NAME))

    for line_number, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line[:64], line[64:66], line[66:]
        if sep not in ("  ", " *") or len(digest) != 64 or not layout.HEX64_RE.match(digest) or not name:
            bad(f"line {line_number} is not `<sha256>  <path>`")
        elif name in listed:
            bad(f"lists {name} twice")
        else:
            listed[name] = digest
    for name, entry in expected.items():
        if name not in listed:
            bad(f"does not list {name}")
        elif listed[name] != entry.sha256:
            bad(f"says {name} has sha256 {listed[name]}, the manifest says {entry.sha256}")
    for name in listed:
        if name not in expected:
            bad(f"lists {name}, which the manifest does not")
    return problems


_FAULT_KINDS = {FileFault.MISSING: ProblemKind.MISSING, FileFault.SYMLINK: ProblemKind.SYMLINK}


def _precheck(source: VolumeSource, number: int, relative: str,
              entry: _Listed) -> tuple[_Expected | None, Problem | None]:
    """Presence, type and size before reading: a file of the wrong size is read only when it is shorter and
    block hashes can tell which of its blocks are still good."""
    shown = source.shown(relative)
    try:
        actual = source.size(relative)
    except VolumeFileError as exc:
        kind = _FAULT_KINDS.get(exc.fault, ProblemKind.UNEXPECTED)
        detail = "listed in the manifest but not present" if kind is ProblemKind.MISSING else str(exc)
        return None, Problem(kind, shown, detail, number, relative)
    item = _Expected(number, VolumeFile(source, relative), relative, actual if entry.size is None else entry.size,
                     entry.sha256, entry.blocks)
    if entry.size is None or actual == entry.size:
        return item, None
    detail = f"{actual} bytes, the manifest says {entry.size}"
    if entry.blocks is not None and actual < entry.size:
        return replace(item, wrong_size=detail), None
    return None, Problem(ProblemKind.SIZE, shown, detail, number, relative)


def _hash_files(to_read: list[_Expected], problems: list[Problem], deep: _DeepCheck | None, options: VerifyOptions,
                block_size: int | None, progress: ProgressCallback) -> tuple[int, int]:
    total = sum(item.size for item in to_read)
    done = files = offset = 0
    task = "verify"
    with HashedReadAhead([item.file for item in to_read], chunk_size=options.chunk_size, block_size=block_size) as reader:
        for event in reader:
            item = to_read[event.index]
            if isinstance(event, FileStart):
                offset = 0
                if deep:
                    deep.start(item)
            elif isinstance(event, FileChunk):
                done += len(event.data)
                if options.on_chunk is not None:
                    options.on_chunk(item.volume, item.relative, offset, event.data)
                offset += len(event.data)
                if deep:
                    deep.feed(event.data)
                progress(ProgressEvent(task=task, done=done, total=total))
            else:
                files += 1
                ok = _check_end(item, event, problems)
                if options.on_file_end is not None:
                    options.on_file_end(item.volume, item.relative, ok)
                if deep:
                    deep.end(item, ok)
    progress(ProgressEvent(task=task, done=done, total=total, finished=True))
    return files, done


def _check_end(item: _Expected, event: FileEnd, problems: list[Problem]) -> bool:
    def bad(kind: ProblemKind, detail: str) -> None:
        problems.append(Problem(kind, item.shown, detail, item.volume, item.relative, _bad_blocks(item, event)))

    if item.wrong_size is not None:
        bad(ProblemKind.SIZE, item.wrong_size)
    elif event.error is not None:
        bad(ProblemKind.UNREADABLE, event.error)
    elif event.size != item.size:
        bad(ProblemKind.SIZE, f"{event.size} bytes read, expected {item.size}")
    elif event.sha256 != item.sha256:
        if item.relative == layout.MANIFEST_NAME:
            bad(ProblemKind.MANIFEST_COPY, f"a copy of the manifest that differs from the trusted one: sha256 "
                                           f"{event.sha256}, expected {item.sha256}")
        else:
            bad(ProblemKind.SHA256, f"content differs: sha256 {event.sha256}, expected {item.sha256}")
    else:
        return True
    return False


def _bad_blocks(item: _Expected, event: FileEnd) -> tuple[int, ...] | None:
    """The blocks of a damaged file that did not match (a block not read to its end is bad); None when the
    manifest lists no block hashes for it."""
    if item.blocks is None or event.blocks is None:
        return None
    got = event.blocks
    return tuple(i for i, want in enumerate(item.blocks) if i >= len(got) or got[i] != want)


class _TooBig(Exception):
    pass


class _DigestSink:
    """Where the deep check's decompressor writes: counts and hashes the layer tar, and stops the
    decompression (raises _TooBig) as soon as it grows past the size the manifest gives."""

    def __init__(self, limit: int, scanner: TarScanner) -> None:
        self.size = 0
        self.limit = limit
        self.sha = hashlib.sha256()
        self.scanner = scanner

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise _TooBig
        self.sha.update(data)
        self.scanner.feed(data)
        return len(data)


class _DeepCheck:
    """Decompresses each layer as its parts stream past, in part order, and checks size and diff id.

    A layer is checked only when all its parts are read in order and each matched its sha256; otherwise the
    part's own problem already names the file and the layer is left out (counted as not checked).
    """

    def __init__(self, manifest: SetManifest, located: LocatedSet, refuse_devices: bool = False) -> None:
        self.refuse_devices = refuse_devices
        self.scanners: list[TarScanner] = []
        self.parts = {(p.volume, p.path): (layer, i) for layer in manifest.layers for i, p in enumerate(layer.parts)}
        self.next_part: dict[int, int] = {layer.number: 0 for layer in manifest.layers}
        self.sinks: dict[int, _DigestSink] = {}
        self.writers: dict[int, Any] = {}
        self.broken: set[int] = set()
        self.active: Layer | None = None
        self.problems: list[Problem] = []
        self.layers_checked = 0
        self.window = 1 << max(manifest.compression.window_log or 27, 27)

    def start(self, item: _Expected) -> None:
        self.active = None
        found = self.parts.get((item.volume, item.relative))
        if found is None:
            return
        layer, index = found
        if layer.number in self.broken or self.next_part[layer.number] != index:
            self.broken.add(layer.number)
            return
        if index == 0:
            self.scanners.append(TarScanner(layer.number))
            self.sinks[layer.number] = _DigestSink(layer.size, self.scanners[-1])
            decompressor = zstandard.ZstdDecompressor(max_window_size=self.window)
            self.writers[layer.number] = decompressor.stream_writer(self.sinks[layer.number], closefd=False)
        self.active = layer

    def feed(self, data: bytes) -> None:
        layer = self.active
        if layer is None:
            return
        try:
            self.writers[layer.number].write(data)
        except zstandard.ZstdError as exc:
            self._fail(layer, f"zstd stream is damaged: {exc}")
        except _TooBig:
            self._fail(layer, f"decompresses to more than the {layer.size} bytes the manifest says (stopped there)")

    def end(self, item: _Expected, ok: bool) -> None:
        layer = self.active
        self.active = None
        if layer is None or layer.number in self.broken:
            return
        if not ok:
            self.broken.add(layer.number)
            return
        self.next_part[layer.number] += 1
        if self.next_part[layer.number] < len(layer.parts):
            return
        try:
            self.writers.pop(layer.number).flush()
        except zstandard.ZstdError as exc:
            self._fail(layer, f"zstd stream is damaged: {exc}")
            return
        except _TooBig:
            self._fail(layer, f"decompresses to more than the {layer.size} bytes the manifest says (stopped there)")
            return
        sink = self.sinks.pop(layer.number)
        digest = "sha256:" + sink.sha.hexdigest()
        if sink.size != layer.size:
            self._fail(layer, f"decompresses to {sink.size} bytes, the manifest says {layer.size}")
        elif digest != layer.diff_id:
            self._fail(layer, f"decompresses to {digest}, the manifest says {layer.diff_id}")
        else:
            self.layers_checked += 1
        if self.refuse_devices:
            names = ", ".join(p.path for p in layer.parts)
            self.problems += [Problem(ProblemKind.LAYER_CONTENT, names, f"layer {layer.number}: {e.name}: {e.detail} "
                                      "(device nodes refused)") for e in sink.scanner.entries if e.kind == "device"]

    def _fail(self, layer: Layer, reason: str) -> None:
        self.broken.add(layer.number)
        self.writers.pop(layer.number, None)
        self.sinks.pop(layer.number, None)
        names = ", ".join(p.path for p in layer.parts)
        self.problems.append(Problem(ProblemKind.LAYER, names, f"layer {layer.number} ({layer.diff_id}): {reason}"))
