"""Strict verification of a set's volumes against the trusted manifest and each volume's SHA256SUMS.

Strict both ways: every file the manifest lists must be present with its size and sha256, and every file
present must be listed; SHA256SUMS must say exactly what the manifest says; each volume's manifest copy
must be the trusted one. Missing volumes are named and the others are still checked.

Each volume's files are read front to back in the manifest's order (the order they were written, which is
the on-disc order an optical drive reads without seeking) by a reader thread, and hashed by a second
thread (imgbuild.discs.readahead). ``deep`` also decompresses every layer whose parts are all present and
checks the layer's size and diff id; that work happens in the calling thread, a third stage.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zstandard

from imgbuild.discs.iso import is_iso, iso_unexpected
from imgbuild.discs.locate import LocatedSet, locate_set, safe_member
from imgbuild.discs.readahead import CHUNK_SIZE, FileChunk, FileEnd, FileStart, HashedReadAhead
from imgbuild.foundation.errors import ArchiveError
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent, no_progress
from imgbuild.parity.damage import assess, volume_locations
from imgbuild.restore.checks import record_check
from imgbuild.restore.layer_content import TarScanner, summarize
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import Layer, SetManifest, Volume


@dataclass(frozen=True)
class VerifyOptions:
    deep: bool = False
    catalog: Path | None = None
    set_id: str | None = None  # which set, when the folders hold volumes of several
    refuse_devices: bool = False  # with deep: device nodes in a layer are problems
    chunk_size: int = CHUNK_SIZE
    # A catalog folder: when it holds the set's manifest copy, this check is recorded beside it (imgbuild/restore/checks.py).
    record_in: Path | None = None


@dataclass(frozen=True)
class Problem:
    """One bad thing, named: ``kind`` is missing, size, sha256, unexpected, symlink, sums, manifest-copy,
    volume-missing, folder, layer or layer-content (--refuse-devices)."""

    kind: str
    path: str
    detail: str
    volume: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "detail": self.detail, "volume": self.volume}


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
    recovery: Any = None
    content: Any = None  # deep: imgbuild.restore.layer_content.ContentSummary of the layers decompressed
    recorded: str | None = None  # the catalog's check record this check was added to

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
        }


@dataclass(frozen=True)
class _Expected:
    """A file to read: where it is and what it must be."""

    volume: int
    path: Path
    relative: str
    size: int
    sha256: str


def verify_set(dirs: Sequence[Path], options: VerifyOptions = VerifyOptions(),
               progress: ProgressCallback = no_progress) -> VerifyReport:
    """Verify the volumes found under ``dirs``; problems are reported, not raised.

    Raises ManifestError when no trustworthy manifest exists (all copies hostile or unreadable).
    """
    started = time.monotonic()
    located = locate_set(dirs, options.catalog, options.set_id)
    manifest = located.manifest
    problems = [Problem("folder", f.folder, f.reason) for f in located.findings]
    missing = tuple(located.missing()) if located.whole_set_expected else ()
    not_given = () if located.whole_set_expected else tuple(located.missing())
    for number in missing:
        problems.append(Problem("volume-missing", manifest.volume(number).folder,
                                f"volume {number} of {manifest.volume_count} is missing", number))
    manifest_sha = hashlib.sha256(located.manifest_bytes).hexdigest()
    to_read: list[_Expected] = []
    for number, folder in located.folders.items():
        volume = manifest.volume(number)
        expected = _expected_files(volume, manifest_sha)
        problems += _unexpected_entries(folder, number, set(expected))
        problems += _check_sums(folder, number, expected)
        for relative, (size, sha) in expected.items():
            item, problem = _precheck(folder, number, relative, size, sha)
            if problem:
                problems.append(problem)
            else:
                to_read.append(item)
    deep = _DeepCheck(manifest, located, options.refuse_devices) if options.deep else None
    files, total = _hash_files(to_read, problems, deep, options.chunk_size, progress)
    if deep is not None:
        problems += deep.problems
    recovery = None
    if problems:
        recovery = assess(manifest, located.folders, problems, volume_locations(located.folders))
    report = VerifyReport(
        set_id=manifest.set_id, name=manifest.name, manifest_source=located.manifest_source,
        volume_count=manifest.volume_count, volumes_checked=tuple(located.folders),
        volumes_missing=missing, volumes_not_given=not_given, files_checked=files, bytes_checked=total,
        seconds=time.monotonic() - started, deep=options.deep,
        layers_checked=deep.layers_checked if deep else 0, problems=tuple(problems), recovery=recovery,
        content=summarize(deep.scanners) if deep else None)
    if options.record_in is not None and layout.catalog_path(options.record_in, manifest.set_id).is_file():
        report = replace(report, recorded=str(record_check(options.record_in, report)))
    return report


def _expected_files(volume: Volume, manifest_sha: str) -> dict[str, tuple[int | None, str]]:
    """Volume-relative path -> (size, sha256), in on-disc order; the manifest copy's size is not recorded."""
    files: dict[str, tuple[int | None, str]] = {f.path: (f.size, f.sha256) for f in volume.files}
    files[layout.MANIFEST_NAME] = (None, manifest_sha)
    return files


def _unexpected_entries(folder: Path, number: int, expected: set[str]) -> list[Problem]:
    """Files (and symlinks, and special files) in the folder that the manifest does not list."""
    allowed = expected | {layout.SUMS_NAME}
    allowed_dirs = {p.rsplit("/", 1)[0] for p in allowed if "/" in p}
    problems: list[Problem] = []
    if is_iso(folder):
        return [Problem("unexpected", f"{folder}/{rel}", "not listed in the manifest", number)
                for rel in iso_unexpected(folder, allowed)]
    for root, dirs, names in os.walk(folder):
        rel_root = Path(root).relative_to(folder).as_posix()
        prefix = "" if rel_root == "." else rel_root + "/"
        for name in sorted(dirs):
            rel = prefix + name
            if os.path.islink(os.path.join(root, name)):
                problems.append(Problem("symlink", str(folder / rel), "a symbolic link, not listed", number))
            elif rel not in allowed_dirs:
                problems.append(Problem("unexpected", str(folder / rel) + "/", "a folder the manifest does not list",
                                        number))
        dirs[:] = [d for d in dirs if (prefix + d) in allowed_dirs and not os.path.islink(os.path.join(root, d))]
        for name in sorted(names):
            rel = prefix + name
            if rel not in allowed:
                problems.append(Problem("unexpected", str(folder / rel), "a file the manifest does not list", number))
    return problems


def _check_sums(folder: Path, number: int, expected: dict[str, tuple[int | None, str]]) -> list[Problem]:
    """SHA256SUMS must list exactly the expected files with exactly the manifest's hashes."""
    where = str(folder / layout.SUMS_NAME)
    try:
        path = safe_member(folder, layout.SUMS_NAME)
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return [Problem("missing", where, "SHA256SUMS is missing", number)]
    except (ArchiveError, UnicodeDecodeError) as exc:
        return [Problem("sums", where, str(exc), number)]
    listed: dict[str, str] = {}
    problems: list[Problem] = []
    for line_number, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line[:64], line[64:66], line[66:]
        if sep not in ("  ", " *") or len(digest) != 64 or not layout.HEX64_RE.match(digest) or not name:
            problems.append(Problem("sums", where, f"line {line_number} is not `<sha256>  <path>`", number))
        elif name in listed:
            problems.append(Problem("sums", where, f"lists {name} twice", number))
        else:
            listed[name] = digest
    for name, (_, sha) in expected.items():
        if name not in listed:
            problems.append(Problem("sums", where, f"does not list {name}", number))
        elif listed[name] != sha:
            problems.append(Problem("sums", where, f"says {name} has sha256 {listed[name]}, the manifest says {sha}",
                                    number))
    for name in listed:
        if name not in expected:
            problems.append(Problem("sums", where, f"lists {name}, which the manifest does not", number))
    return problems


def _precheck(folder: Path, number: int, relative: str, size: int | None,
              sha: str) -> tuple[_Expected | None, Problem | None]:
    """Presence, type and size before reading: a file of the wrong size is not worth reading."""
    shown = str(folder / relative)
    try:
        path = safe_member(folder, relative)
    except FileNotFoundError:
        return None, Problem("missing", shown, "listed in the manifest but not present", number)
    except ArchiveError as exc:
        kind = "symlink" if "symbolic link" in str(exc) else "unexpected"
        return None, Problem(kind, shown, str(exc), number)
    actual = path.lstat().st_size
    if size is not None and actual != size:
        return None, Problem("size", shown, f"{actual} bytes, the manifest says {size}", number)
    return _Expected(number, path, relative, actual if size is None else size, sha), None


def _hash_files(to_read: list[_Expected], problems: list[Problem], deep: "_DeepCheck | None", chunk_size: int,
                progress: ProgressCallback) -> tuple[int, int]:
    total = sum(item.size for item in to_read)
    done = files = 0
    task = "verify"
    with HashedReadAhead([item.path for item in to_read], chunk_size=chunk_size) as reader:
        for event in reader:
            item = to_read[event.index]
            if isinstance(event, FileStart):
                if deep:
                    deep.start(item)
            elif isinstance(event, FileChunk):
                done += len(event.data)
                if deep:
                    deep.feed(event.data)
                progress(ProgressEvent(task=task, done=done, total=total))
            else:
                files += 1
                ok = _check_end(item, event, problems)
                if deep:
                    deep.end(item, ok)
    progress(ProgressEvent(task=task, done=done, total=total, finished=True))
    return files, done


def _check_end(item: _Expected, event: FileEnd, problems: list[Problem]) -> bool:
    shown = str(item.path)
    if event.error is not None:
        problems.append(Problem("unreadable", shown, event.error, item.volume))
    elif event.size != item.size:
        problems.append(Problem("size", shown, f"{event.size} bytes read, expected {item.size}", item.volume))
    elif event.sha256 != item.sha256:
        what = "a copy of the manifest that differs from the trusted one" \
            if item.relative == layout.MANIFEST_NAME else "content differs"
        kind = "manifest-copy" if item.relative == layout.MANIFEST_NAME else "sha256"
        problems.append(Problem(kind, shown, f"{what}: sha256 {event.sha256}, expected {item.sha256}", item.volume))
    else:
        return True
    return False


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
            self.problems += [Problem("layer-content", names, f"layer {layer.number}: {e.name}: {e.detail} "
                                      "(--refuse-devices)") for e in sink.scanner.entries if e.kind == "device"]

    def _fail(self, layer: Layer, reason: str) -> None:
        self.broken.add(layer.number)
        self.writers.pop(layer.number, None)
        self.sinks.pop(layer.number, None)
        names = ", ".join(p.path for p in layer.parts)
        self.problems.append(Problem("layer", names, f"layer {layer.number} ({layer.diff_id}): {reason}"))
