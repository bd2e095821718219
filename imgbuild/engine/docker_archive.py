"""A docker-archive tar (the format of `docker save` / `podman save`) built on the fly, for the engines' load API.

Both Docker Engine 20.10 and Podman 4.3 accept `POST /images/load` with a body produced by a Python iterable,
chunked or with a Content-Length: neither needs a seekable body (both copy the body into their own temporary
storage before importing). Tar headers need each member's size up front; the set manifest records every
layer's uncompressed size, so the stream, and its exact length, are known without a temporary copy.

Why the member order is layers, then configs, then manifest.json last, and why RepoTags is null:
an engine imports nothing until it has read manifest.json, and both engines accept a tar that simply ends
without the end-of-archive blocks. A caller that finds a bad part therefore stops the generator before
manifest.json is produced and the engine refuses the whole load ("manifest.json: file does not exist");
and as the archive names no tags, even a load that did happen cannot shadow a tag. Tagging is the caller's
job, after the engine reported the expected image ids.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass

import docker.errors

from imgbuild.engine.connect import Engine
from imgbuild.engine.image_ids import describe
from imgbuild.foundation.errors import LoadError

BLOCK = 512
# Tar members are written with a fixed mode and time: the engines ignore them, and a fixed value keeps the
# stream reproducible for tests.
_MODE = 0o644


@dataclass(frozen=True)
class ArchiveLayer:
    """One layer: its uncompressed digest ("sha256:<hex>"), uncompressed size and a function that opens
    a fresh iterator over its uncompressed bytes."""

    diff_id: str
    size: int
    open: Callable[[], Iterable[bytes]]


@dataclass(frozen=True)
class ArchiveImage:
    """One image: its config JSON exactly as archived (its sha256 is the image id) and its layers' diff ids."""

    config: bytes
    diff_ids: tuple[str, ...]


def hex_of(digest: str) -> str:
    """The hex part of "sha256:<hex>"; refuses anything else, since it becomes a file name in the tar."""
    algo, _, value = digest.partition(":")
    if algo != "sha256" or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise LoadError(f"not a sha256 digest: {digest!r}")
    return value


def layer_member(diff_id: str) -> str:
    return f"{hex_of(diff_id)}/layer.tar"


def config_member(config: bytes) -> str:
    return f"{hashlib.sha256(config).hexdigest()}.json"


def tar_header(name: str, size: int) -> bytes:
    """A tar header for a regular file. PAX format, so members above 8 GiB get an exact size record."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = _MODE
    info.mtime = 0
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def manifest_json(images: Iterable[ArchiveImage]) -> bytes:
    entries = [{"Config": config_member(image.config), "RepoTags": None,
                "Layers": [layer_member(d) for d in image.diff_ids]} for image in images]
    return json.dumps(entries, separators=(",", ":")).encode()


class DockerArchive:
    """A docker-archive tar holding ``images``; ``layers`` maps diff id -> layer (each stored once).

    Iterating yields the tar's bytes. ``len()`` is its exact size, known before any layer is read, so the
    HTTP body goes out with a Content-Length instead of chunked framing (no copy of every chunk).

    Layers are emitted in the order of ``layers`` (the caller's read order, e.g. on-disc order), which with
    ``present`` must hold exactly the layers the images use. A layer whose stream yields more or fewer bytes
    than its size raises LoadError before the tar would become inconsistent; an exception from a layer stream
    propagates, and manifest.json is then never yielded.

    ``present``: layers the engine already holds under the same parent layers (loaded by an earlier step of
    load_steps.py). Each is an empty member: Docker's classic store looks a layer up by chain id before it
    opens its file, and Podman's docker-archive reader wants every listed file to exist but skips reading a
    layer its storage has. ``before_tail`` is called after the last layer byte and before the configs and
    manifest.json: the engine imports nothing before it has them, so a caller can hold the import back there.
    """

    def __init__(self, images: list[ArchiveImage], layers: dict[str, ArchiveLayer],
                 present: Collection[str] = (), before_tail: Callable[[], None] | None = None) -> None:
        used = {diff_id for image in images for diff_id in image.diff_ids}
        for image in images:
            for diff_id in image.diff_ids:
                if diff_id not in layers and diff_id not in present:
                    raise LoadError(f"image {config_member(image.config)} needs layer {diff_id}, "
                                    "which is not in the set")
        if set(layers) - used or set(present) - used or set(layers) & set(present):
            raise LoadError(f"layers {sorted((set(layers) | set(present)) - used)} are used by none of the images "
                            "being loaded, or are both sent and present")
        self.images = images
        self.layers = layers
        self.before_tail = before_tail
        configs = {config_member(image.config): image.config for image in images}
        self.small = [_member_bytes(layer_member(diff_id), b"") for diff_id in sorted(present)]
        self.small += [_member_bytes(name, data) for name, data in configs.items()]
        self.small.append(_member_bytes("manifest.json", manifest_json(images)))

    def __len__(self) -> int:
        members = sum(len(tar_header(layer_member(d), layer.size)) + layer.size + len(padding(layer.size))
                      for d, layer in self.layers.items())
        return members + sum(len(member) for member in self.small) + 2 * BLOCK

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for diff_id, layer in self.layers.items():
            for chunk in _member_stream(layer_member(diff_id), layer):
                sent += len(chunk)
                yield chunk
        if self.before_tail is not None:
            self.before_tail()
        tail = b"".join(self.small) + b"\0" * (2 * BLOCK)
        # A body shorter than its Content-Length would leave the engine waiting for the rest.
        if sent + len(tail) != len(self):
            raise LoadError(f"internal error: the tar has {sent + len(tail)} bytes, {len(self)} were announced")
        yield tail


def docker_archive(images: list[ArchiveImage], layers: dict[str, ArchiveLayer], present: Collection[str] = (),
                   before_tail: Callable[[], None] | None = None) -> DockerArchive:
    return DockerArchive(images, layers, present, before_tail)


def _member_bytes(name: str, data: bytes) -> bytes:
    return tar_header(name, len(data)) + data + padding(len(data))


def _member_stream(name: str, layer: ArchiveLayer) -> Iterator[bytes]:
    yield tar_header(name, layer.size)
    sent = 0
    for chunk in layer.open():
        sent += len(chunk)
        if sent > layer.size:
            raise LoadError(f"layer {layer.diff_id} is longer than the {layer.size} bytes the manifest says")
        if chunk:
            yield chunk
    if sent != layer.size:
        raise LoadError(f"layer {layer.diff_id} has {sent} bytes, the manifest says {layer.size}")
    pad = padding(layer.size)
    if pad:
        yield pad


def post_archive(engine: Engine, body: Iterable[bytes]) -> None:
    """POST /images/load with ``body``; LoadError with the engine's words when it refuses the images."""
    try:
        for line in engine.api.load_image(body):
            if isinstance(line, dict) and (line.get("error") or line.get("errorDetail")):
                message = line.get("error") or line["errorDetail"].get("message", "")
                raise LoadError(f"{describe(engine)} refused the images: {message}")
    except docker.errors.APIError as exc:
        raise LoadError(f"{describe(engine)} refused the images: {exc.explanation or exc}") from exc
