"""One layer of a save stream -> sha256 (its diff id) and zstd -> the volume writer, in parallel stages.

The three kinds of work run at the same time on different chunks: hashing the uncompressed bytes (a
background thread), compressing them (handed to zstd's worker threads, or on one or two CPUs in this thread
when that costs the layer less CPU: LayerCompression) and writing and hashing the compressed bytes (another
background thread). hashlib, zstd and file writes all release the GIL, so on a machine with few cores the
stages overlap instead of taking turns; each stage keeps its order and holds at most a few chunks, so
memory stays bounded.

Layers are keyed by their diff id: one that the set already holds is not stored again (Podman names layer
members by diff id, so such a layer is only read past and checked; otherwise its parts are written, then
removed again when its digest turns out to be known).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import zstandard

from imgbuild.archive.volume_writer import VolumeWriter
from imgbuild.foundation.errors import ArchiveError
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent
from imgbuild.setformat.manifest import Layer

LONG_WINDOW_LOG = 27  # the largest window plain `zstd -d` accepts without --long
_PODMAN_LAYER = re.compile(r"^([0-9a-f]{64})\.tar$")


class LayerMismatch(ArchiveError):
    """A layer's bytes do not hash to the diff id its source promised; nothing of it was kept."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(f"{name} hashes to {actual}, not to its diff id {expected}")
        self.name, self.expected, self.actual = name, expected, actual


class InOrderStage:
    """A background thread running submitted calls in order, with at most ``depth`` of them pending."""

    def __init__(self, name: str, depth: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: deque[Future[Any]] = deque()
        self._depth = depth

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self._depth:
            self._pending.popleft().result()  # raises the stage's error here, in the caller's thread

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def discard(self) -> None:
        """Wait for what is pending and forget its errors (the caller is already failing)."""
        while self._pending:
            self._pending.popleft().exception()

    def close(self) -> None:
        self.discard()
        self._pool.shutdown(wait=True)


def make_compressor(level: int, long: bool, threads: int) -> zstandard.ZstdCompressor:
    params = zstandard.ZstdCompressionParameters.from_level(
        level, threads=threads, write_checksum=1, write_content_size=1,
        enable_ldm=1 if long else 0, window_log=LONG_WINDOW_LOG if long else 0)
    return zstandard.ZstdCompressor(compression_params=params)


class LayerCompression:
    """zstd at the set's level and window; on a machine of one or two CPUs, in whichever of zstd's two modes
    costs the layer less CPU.

    zstd's worker threads compress each job from a buffer of its own; its one-thread stream compresses
    through a ring buffer, and matches that cross its wrap take a slower path. On layers that compress well
    (libraries, code) the worker threads therefore cost less CPU in all, on layers that barely compress
    (float weights) the one-thread stream does. Measured on a torch wheel layer (676 MiB, to 22 %): 3.8 s of
    CPU with two workers, 5.2 s in one thread; on a 224 MiB weights layer (to 92 %): 1.06 s against 0.80 s.
    With one or two CPUs the archive is bound by its CPU time, so such a layer goes through the one-thread
    stream while the hashing and writing stages use the other CPU; with more CPUs, or with ``--long`` (whose
    128 MiB window each mode would hold), every layer goes through the worker threads. The start of each
    layer (its first MiB at most), compressed at level 1, says which kind it is. Both modes write the same
    format, a single zstd frame.
    """

    PROBE = 1024 * 1024
    INCOMPRESSIBLE = 0.8  # a start that zstd -1 shrinks less than this: the layer barely compresses
    FEW_CPUS = 2

    def __init__(self, level: int, long: bool, threads: int, cpus: int | None = None) -> None:
        self.threaded = make_compressor(level, long, threads)
        workers = threads if threads > 0 else cpus or _usable_cpus()
        pick = threads != 0 and not long and workers <= self.FEW_CPUS
        self.single = make_compressor(level, long, 0) if pick else self.threaded
        self._probe = zstandard.ZstdCompressor(level=1)

    def for_layer(self, first: memoryview) -> zstandard.ZstdCompressor:
        """The compressor for a layer whose stream begins with ``first``."""
        sample = first[:self.PROBE]
        if self.single is self.threaded or not len(sample):
            return self.threaded
        barely = len(self._probe.compress(sample)) > self.INCOMPRESSIBLE * len(sample)
        return self.single if barely else self.threaded


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as a container's or taskset's limit sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class LayerArchiver:
    """The save stream reader's layer consumer: stores each distinct layer once, in arrival order."""

    def __init__(self, writer: VolumeWriter, compression: LayerCompression, progress: ProgressCallback,
                 task: str, total: int | None) -> None:
        self._writer = writer
        self._compression = compression
        self._progress = progress
        self._task = task
        self._total = total
        self.done = 0
        self.layers: list[Layer] = []
        self.stored: set[str] = set()
        self._hashing = InOrderStage("layer-hash")
        self._writing = InOrderStage("layer-write")

    def close(self) -> None:
        self._hashing.close()
        self._writing.close()

    def __call__(self, name: str, size: int, chunks: Iterator[memoryview], expected: str | None = None) -> str:
        """Store one layer; with ``expected``, a layer hashing to anything else is discarded (LayerMismatch)."""
        hint = _PODMAN_LAYER.match(name.rsplit("/", 1)[-1])
        if hint and "sha256:" + hint[1] in self.stored:
            return _hash_only(name, hint[1], chunks)
        number = len(self.layers) + 1
        sink = self._writer.layer(number)
        digest = hashlib.sha256()
        stream = None
        counted = 0
        try:
            for chunk in chunks:
                if stream is None:
                    stream = self._compression.for_layer(chunk).compressobj(size=size)
                counted += len(chunk)
                self._hashing.submit(digest.update, chunk)
                self._writing.submit(sink.write, stream.compress(chunk))
                self.done += len(chunk)
                self._progress(ProgressEvent(task=self._task, done=self.done, total=self._total))
            if stream is None:  # an empty layer
                stream = self._compression.threaded.compressobj(size=size)
            self._writing.submit(sink.write, stream.flush())
            self._hashing.drain()
            self._writing.drain()
        except BaseException:
            self._hashing.discard()
            self._writing.discard()
            sink.abort()
            raise
        diff_id = "sha256:" + digest.hexdigest()
        if expected is not None and diff_id != expected:
            sink.abort()
            raise LayerMismatch(name, expected, diff_id)
        if diff_id in self.stored:
            sink.abort()  # the same layer under another name: stored once per set
            return diff_id
        if size < 0:  # a layer the engine saved compressed: its size is known once it is unpacked
            size = counted
        parts, compressed_size, compressed_sha = sink.commit()
        self.layers.append(Layer(number=number, diff_id=diff_id, size=size, compressed_size=compressed_size,
                                 compressed_sha256=compressed_sha, parts=parts))
        self.stored.add(diff_id)
        return diff_id


def _hash_only(name: str, expected: str, chunks: Iterator[memoryview]) -> str:
    """A layer the set already holds: read past it, but check that it is what its name says."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ArchiveError(f"the engine's save stream member {name} does not hash to the diff id its name says")
    return "sha256:" + expected
