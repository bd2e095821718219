"""Read an engine's save stream (a docker-archive tar) once, on the fly, handing each layer to a consumer.

Both engines write layers before manifest.json, so a layer's role is only certain at the end: members are
classified by what they are instead. Layers are the `*.tar` members (Podman: `<diff id>.tar`, Docker
Engine 20.10: `<v1 id>/layer.tar`) or, in an OCI-style archive (newer Docker), `blobs/...` members that are
not JSON. Small members (configs, manifest.json, repositories, per-layer json) are kept in memory.
Symlinks and hard links (Podman links `<v1 id>/layer.tar` to `../<diff id>.tar`) become aliases.

Reading happens in a background thread so the socket keeps flowing while the consumer hashes and
compresses: the engine never waits for us unless the bounded queue is full.
"""

from __future__ import annotations

import io
import json
import posixpath
import queue
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from imgbuild import layout
from imgbuild.errors import ArchiveError

CHUNK = 4 * 1024 * 1024
QUEUE_DEPTH = 8

# (member name, uncompressed size, iterator over its bytes) -> diff id ("sha256:<hex>")
LayerConsumer = Callable[[str, int, Iterator[bytes]], str]


@dataclass
class SavedArchive:
    """What remains of a save stream once its layers went to the consumer."""

    small_files: dict[str, bytes] = field(default_factory=dict)
    layer_members: dict[str, str] = field(default_factory=dict)  # member name -> diff id
    aliases: dict[str, str] = field(default_factory=dict)  # link name -> target name

    def resolve(self, name: str) -> str:
        seen = set()
        while name in self.aliases and name not in seen:
            seen.add(name)
            name = self.aliases[name]
        return name

    def docker_manifest(self) -> list[dict[str, Any]]:
        raw = self.small_files.get("manifest.json")
        if raw is None:
            raise ArchiveError("the engine's save stream has no manifest.json")
        entries = json.loads(raw)
        if not isinstance(entries, list):
            raise ArchiveError("the engine's manifest.json is not a list")
        return entries

    def config_bytes(self, name: str) -> bytes:
        data = self.small_files.get(self.resolve(name))
        if data is None:
            raise ArchiveError(f"the engine's save stream lacks the config {name}")
        return data

    def layer_diff_id(self, name: str) -> str:
        diff_id = self.layer_members.get(self.resolve(name))
        if diff_id is None:
            raise ArchiveError(f"the engine's save stream lacks the layer {name}")
        return diff_id


class _QueueReader(io.RawIOBase):
    """A file object over chunks produced by a background thread."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(QUEUE_DEPTH)
        self._buffer = memoryview(b"")
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, args=(chunks,), daemon=True, name="save-reader")
        self._thread.start()

    def _pump(self, chunks: Iterable[bytes]) -> None:
        try:
            for chunk in chunks:
                if self._stop.is_set():
                    return
                if chunk:
                    self._queue.put(chunk)
            self._queue.put(None)
        except BaseException as exc:  # handed to the consumer thread, which raises it
            self._queue.put(exc)

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            if self._done:
                return 0
            item = self._queue.get()
            if item is None:
                self._done = True
                return 0
            if isinstance(item, BaseException):
                self._done = True
                raise ArchiveError(f"reading the engine's save stream failed: {item}") from item
            self._buffer = memoryview(item)
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        self._stop.set()
        # Unblock the pump if it waits on a full queue.
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        super().close()


def _member_chunks(fileobj: io.BufferedIOBase, size: int) -> Iterator[bytes]:
    left = size
    while left:
        data = fileobj.read(min(CHUNK, left))
        if not data:
            raise ArchiveError(f"the engine's save stream ended inside a member ({left} bytes missing)")
        left -= len(data)
        yield data


def _is_layer(name: str, size: int, head: bytes) -> bool:
    if name.endswith(".tar"):
        return True
    if name.startswith("blobs/"):
        return size > layout.MAX_CONFIG_BYTES or not head.lstrip().startswith(b"{")
    return False


def read_save_stream(chunks: Iterable[bytes], on_layer: LayerConsumer) -> SavedArchive:
    """Walk a docker-archive tar stream once; every layer goes to ``on_layer`` as it streams."""
    saved = SavedArchive()
    reader = _QueueReader(chunks)
    try:
        with tarfile.open(fileobj=reader, mode="r|", bufsize=1024 * 1024) as tar:
            for member in tar:
                name = posixpath.normpath(member.name)
                if member.issym() or member.islnk():
                    target = member.linkname
                    if member.issym():
                        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
                    saved.aliases[name] = posixpath.normpath(target)
                    continue
                if not member.isfile():
                    continue
                data = tar.extractfile(member)
                assert data is not None
                head = data.read(min(member.size, 512))
                rest = _member_chunks(data, member.size - len(head))
                if _is_layer(name, member.size, head):
                    saved.layer_members[name] = on_layer(name, member.size, _prepend(head, rest))
                elif member.size <= layout.MAX_CONFIG_BYTES:
                    saved.small_files[name] = head + b"".join(rest)
                else:
                    for _ in rest:  # an unknown large member: read past it
                        pass
    except tarfile.TarError as exc:
        raise ArchiveError(f"the engine's save stream is not a readable tar: {exc}") from exc
    finally:
        reader.close()
    return saved


def _prepend(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest
