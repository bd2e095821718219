"""Read files one after another in a background thread, in big sequential reads, and hash them in another.

Optical drives are fast when read straight through and very slow when they seek, so volume files are read
in their on-disc order by one thread that does nothing but read; a second thread computes each file's sha256
(hashlib releases the GIL), and the consumer (verify's bookkeeping, load's decompressor) works on earlier
chunks meanwhile. Queues are bounded, so memory stays at about ``2 * depth * chunk_size`` whatever the file
sizes. Files (volume files, imgbuild/discs/sources.py, or plain paths) come from an iterable that is consumed
lazily, so a caller may ask for the next disc in between; an exception raised by that iterable reaches the
consumer. With a block size, the hasher also hashes each block (imgbuild/setformat/blockhash.py), so that a
file found damaged is located to the block in the same read.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from imgbuild.discs.sources import VolumeFile
from imgbuild.foundation.errors import VolumeFileError
from imgbuild.setformat.blockhash import BlockHasher

CHUNK_SIZE = 4 * 1024 * 1024
QUEUE_DEPTH = 8


ReadItem = VolumeFile | Path


@dataclass(frozen=True)
class FileStart:
    index: int
    path: ReadItem


@dataclass(frozen=True)
class FileChunk:
    index: int
    data: bytes


@dataclass(frozen=True)
class FileEnd:
    """End of one file: ``error`` is set when it could not be opened or read (missing, I/O error);
    ``sha256`` (hex) is set by HashedReadAhead when the whole file was read; ``blocks``, with a block size,
    the sha256 of each block read (also when an error stopped the read)."""

    index: int
    size: int
    error: str | None = None
    sha256: str | None = None
    blocks: tuple[str, ...] | None = None


Event = FileStart | FileChunk | FileEnd
_DONE = object()


class _Stage:
    """A producer thread feeding a bounded queue; iterate to consume, close() to stop it early."""

    name = "imgbuild-stage"

    def __init__(self, depth: int) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():  # closed: the producer will put nothing more
                    return
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        # Drain, so a producer blocked on a full queue sees the stop flag.
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> "_Stage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(exc)
            return
        self._put(_DONE)

    def _produce(self) -> None:
        raise NotImplementedError


class ReadAhead(_Stage):
    """FileStart/FileChunk/FileEnd events of ``paths``, read in order with big sequential reads."""

    name = "imgbuild-reader"

    def __init__(self, paths: Iterable[ReadItem], *, chunk_size: int = CHUNK_SIZE, depth: int = QUEUE_DEPTH) -> None:
        super().__init__(depth)
        self._paths = paths
        self._chunk_size = chunk_size
        self._thread.start()

    def _produce(self) -> None:
        for index, path in enumerate(self._paths):
            if not self._put(FileStart(index, path)) or not self._read_one(index, path):
                return

    def _read_one(self, index: int, path: ReadItem) -> bool:
        size = 0
        try:
            handle: BinaryIO
            if isinstance(path, VolumeFile):
                handle = path.open()
            else:
                # O_NOFOLLOW: a symlink planted on a volume is not followed (the layout checks refuse them too).
                handle = os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb", buffering=0)
        except VolumeFileError as exc:
            return self._put(FileEnd(index, 0, exc.detail))
        except OSError as exc:
            return self._put(FileEnd(index, 0, exc.strerror or str(exc)))
        try:
            with handle:
                _advise_sequential(handle)
                while True:
                    data = handle.read(self._chunk_size)
                    if not data:
                        break
                    size += len(data)
                    if not self._put(FileChunk(index, data)):
                        return False
        except OSError as exc:
            return self._put(FileEnd(index, size, exc.strerror or str(exc)))
        return self._put(FileEnd(index, size))


class HashedReadAhead(_Stage):
    """ReadAhead plus a hasher thread: the same events, with FileEnd.sha256 filled in."""

    name = "imgbuild-hasher"

    def __init__(self, paths: Iterable[ReadItem], *, chunk_size: int = CHUNK_SIZE, depth: int = QUEUE_DEPTH,
                 block_size: int | None = None) -> None:
        super().__init__(depth)
        self._reader = ReadAhead(paths, chunk_size=chunk_size, depth=depth)
        self._block_size = block_size
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._reader.close()
        super().close()

    def _new(self) -> hashlib._Hash | BlockHasher:
        return BlockHasher(self._block_size) if self._block_size else hashlib.sha256()

    def _produce(self) -> None:
        digest = self._new()
        for event in self._reader:
            if isinstance(event, FileStart):
                digest = self._new()
            elif isinstance(event, FileChunk):
                digest.update(event.data)
            else:
                blocks = tuple(digest.block_hexdigests()) if isinstance(digest, BlockHasher) else None
                event = FileEnd(event.index, event.size, event.error,
                                digest.hexdigest() if event.error is None else None, blocks)
            if not self._put(event):
                return


def _advise_sequential(handle: BinaryIO) -> None:
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # a kept small file (in memory) has no file descriptor
