"""`imgbuild push`: a set's images from its volumes into an OCI distribution registry, one read of the discs.

A layer's zstd stream on the discs is already an OCI layer blob (``application/vnd.oci.image.layer.v1.tar+zstd``,
digest = the sha256 of its parts joined, which the set manifest records), so by default the parts are sent
as they are: each part's size and sha256 are checked when its last byte has been read, and the blob's digest
before the upload is committed, so a damaged part never becomes a blob. ``--layer-format gzip`` decompresses
and gzips on the fly (4 MiB blocks as gzip members on all cores; members joined are one valid gzip file)
for clients that cannot pull zstd layers, checking the layer's diff id as it goes.

Configs are pushed byte for byte, so a pulled image has the set's image id. Blobs the registry already has
are not sent again (a rerun after an interruption sends only what is missing); a blob already sent to another
repository of the same registry is mounted there instead of read again. Tags go last, per image, after all
of that image's blobs are in place.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from imgbuild.discs.locate import LocatedSet, locate_set
from imgbuild.discs.readahead import FileChunk, FileEnd, FileStart, HashedReadAhead
from imgbuild.discs.sources import VolumeFile
from imgbuild.fleet.registry import OCI_MANIFEST, Registry, RegistryRef
from imgbuild.foundation.atomicfile import write_atomic
from imgbuild.foundation.cachedir import default_cache_dir
from imgbuild.foundation.errors import ChecksumMismatch, LoadError, OptionError, Remedy, UsageError
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent, no_progress
from imgbuild.restore.load import read_config, select_images
from imgbuild.setformat.manifest import Image, Layer

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {"zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
               "gzip": "application/vnd.oci.image.layer.v1.tar+gzip"}
GZIP_BLOCK = 4 * 1024 * 1024
GZIP_LEVEL = 6


@dataclass(frozen=True)
class PushOptions:
    registry: str  # HOST[:PORT][/PREFIX]
    tags: tuple[str, ...] = ()  # NAME:TAG per chosen image, in order; default: the set's tags
    images: tuple[str, ...] = ()  # which images (default all), named as `load` names them
    layer_format: str = "zstd"
    ca_file: Path | None = None
    insecure: bool = False  # plain HTTP
    catalog: Path | None = None
    set_id: str | None = None
    threads: int = 0  # gzip threads; 0: one per CPU
    cache_dir: Path | None = None  # where gzip digests are remembered; None: imgbuild's cache folder


@dataclass(frozen=True)
class PushedImage:
    number: int
    id: str
    references: tuple[str, ...]
    digest: str  # the manifest's digest: pull by REFERENCE@DIGEST to get exactly this image

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "id": self.id, "references": list(self.references), "digest": self.digest}


@dataclass(frozen=True)
class PushResult:
    set_id: str
    name: str
    registry: str
    layer_format: str
    images: tuple[PushedImage, ...]
    blobs_sent: int
    blobs_mounted: int
    blobs_present: int
    bytes_read: int
    bytes_sent: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"set_id": self.set_id, "name": self.name, "registry": self.registry,
                "layer_format": self.layer_format, "images": [i.to_json() for i in self.images],
                "blobs_sent": self.blobs_sent, "blobs_mounted": self.blobs_mounted,
                "blobs_present": self.blobs_present, "bytes_read": self.bytes_read, "bytes_sent": self.bytes_sent,
                "seconds": round(self.seconds, 3)}


def repository_and_tag(ref: str) -> tuple[str, str]:
    """("name/path", "tag") of an image reference, without its registry host ("localhost/x:1" -> "x", "1")."""
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        ref = rest
    name, tag = ref, "latest"
    if ref.rfind(":") > ref.rfind("/"):
        name, tag = ref.rsplit(":", 1)
    return name.lower(), tag


def targets(images: Sequence[Image], registry: RegistryRef, tags: Sequence[str]) -> list[list[tuple[str, str]]]:
    """Per image, the (repository, tag) pairs it is pushed as."""
    if tags and len(tags) != len(images):
        raise OptionError("tags", f"{len(tags)} given for {len(images)} images; give one per image, in order")
    found = []
    for number, image in enumerate(images):
        names = [tags[number]] if tags else [t for t in image.tags if "@" not in t]
        if not names:
            raise UsageError(f"image {image.number} ({image.id}) has no tag", remedy=Remedy.NAME_TAG)
        found.append([(registry.repository(name), tag) for name, tag in map(repository_and_tag, names)])
    return found


def push_set(dirs: Sequence[Path], options: PushOptions, progress: ProgressCallback = no_progress) -> PushResult:
    started = time.monotonic()
    if options.layer_format not in LAYER_TYPES:
        raise OptionError("layer_format", f"{options.layer_format!r}: choose zstd or gzip")
    located = locate_set(dirs, options.catalog, options.set_id)
    manifest = located.manifest
    chosen = select_images(manifest, options.images)
    ref = RegistryRef.parse(options.registry)
    where = targets(chosen, ref, options.tags)
    missing = sorted({layer.parts[0].volume for layer in manifest.layers} - set(located.volumes))
    if missing:
        raise LoadError("volumes needed but not found: " + "; ".join(located.label(n) for n in missing))
    configs = [read_config(located, image) for image in chosen]
    registry = Registry(ref, ca_file=options.ca_file, insecure=options.insecure)
    registry.ping()
    pusher = _BlobPusher(registry, located, options, progress)
    pushed = []
    by_diff = {layer.diff_id: layer for layer in manifest.layers}
    for image, config, names in zip(chosen, configs, where):
        descriptors = [pusher.layer(by_diff[diff_id], [repo for repo, _ in names]) for diff_id in image.layers]
        for repository in {repo for repo, _ in names}:
            if not registry.has_blob(repository, image.id):
                registry.put_blob(repository, config, image.id)
        body = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": image.id, "size": len(config)},
            "layers": descriptors,
        }, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        for repository, tag in names:
            registry.put_manifest(repository, tag, body, OCI_MANIFEST)
        pushed.append(PushedImage(image.number, image.id, tuple(f"{ref.host}/{r}:{t}" for r, t in names), digest))
    return PushResult(set_id=manifest.set_id, name=manifest.name, registry=options.registry,
                      layer_format=options.layer_format, images=tuple(pushed), blobs_sent=pusher.sent,
                      blobs_mounted=pusher.mounted, blobs_present=pusher.present, bytes_read=pusher.bytes_read,
                      bytes_sent=pusher.bytes_sent, seconds=time.monotonic() - started)


class _BlobPusher:
    """Each layer blob into every repository that needs it: present, mounted, or read from the discs once."""

    def __init__(self, registry: Registry, located: LocatedSet, options: PushOptions,
                 progress: ProgressCallback) -> None:
        self.registry = registry
        self.located = located
        self.options = options
        self.progress = progress
        self.media_type = LAYER_TYPES[options.layer_format]
        self.uploaded: dict[str, tuple[str, str, int]] = {}  # diff id -> (repository, digest, size)
        # gzip output is the same for the same layer, so its digest is remembered: a rerun then finds the
        # blobs it sent before instead of recompressing to learn their digests.
        self.gzip_digests = _GzipDigests((options.cache_dir or default_cache_dir()) / "push-gzip-digests.json")
        self.sent = self.mounted = self.present = 0
        self.bytes_read = self.bytes_sent = 0
        self.total = sum(layer.compressed_size for layer in located.manifest.layers)

    def layer(self, layer: Layer, repositories: list[str]) -> dict[str, Any]:
        """The layer's descriptor, once its blob is in every one of ``repositories``."""
        known = self.uploaded.get(layer.diff_id)
        if known is None and self.options.layer_format == "zstd":
            known = ("", "sha256:" + layer.compressed_sha256, layer.compressed_size)
        elif known is None:
            known = self.gzip_digests.get(layer.diff_id)
        for repository in repositories:
            if known and self.registry.has_blob(repository, known[1]):
                self.present += 1
                continue
            if known and known[0] and self.registry.mount_blob(repository, known[1], known[0]):
                self.mounted += 1
                continue
            digest, size = self._upload(layer, repository)
            known = (repository, digest, size)
            self.sent += 1
        assert known is not None
        self.uploaded[layer.diff_id] = known
        return {"mediaType": self.media_type, "digest": known[1], "size": known[2]}

    def _upload(self, layer: Layer, repository: str) -> tuple[str, int]:
        blob = hashlib.sha256()
        what = f"layer {layer.number} ({layer.diff_id}) to {repository}"
        stream = self._parts(layer)
        if self.options.layer_format == "gzip":
            stream = _gzipped(_decompressed(stream, layer), self.options.threads or os.cpu_count() or 1)

        def counted() -> Iterator[bytes]:
            for chunk in stream:
                blob.update(chunk)
                self.bytes_sent += len(chunk)
                yield chunk

        def digest_of() -> str:
            digest = "sha256:" + blob.hexdigest()
            if self.options.layer_format == "zstd" and digest != "sha256:" + layer.compressed_sha256:
                raise ChecksumMismatch(f"layer {layer.number} ({layer.diff_id})", layer.compressed_sha256,
                                       digest.removeprefix("sha256:"))
            return digest

        try:
            digest, size = self.registry.upload_blob(repository, counted(), digest_of, what)
        finally:
            stream.close()  # type: ignore[attr-defined]
        if self.options.layer_format == "gzip":
            self.gzip_digests.put(layer.diff_id, digest, size)
        return digest, size

    def _parts(self, layer: Layer) -> Iterator[bytes]:
        """The layer's compressed bytes, each part checked (size, sha256) when its last byte was read."""
        paths = [VolumeFile(self.located.volumes[part.volume], part.path) for part in layer.parts]
        reader = HashedReadAhead(paths)
        try:
            index = -1
            for event in reader:
                if isinstance(event, FileStart):
                    index = event.index
                elif isinstance(event, FileChunk):
                    self.bytes_read += len(event.data)
                    self.progress(ProgressEvent(task=f"push {self.located.manifest.name}", done=self.bytes_read,
                                                total=self.total))
                    yield event.data
                else:
                    _check_part(paths[index], layer.parts[index], event)
        finally:
            reader.close()


def _check_part(path: VolumeFile, part: Any, event: FileEnd) -> None:
    if event.error is not None:
        raise LoadError(f"{path}: {event.error}")
    if event.size != part.size:
        raise LoadError(f"{path}: {event.size} bytes read, the manifest says {part.size}")
    if event.sha256 != part.sha256:
        raise ChecksumMismatch(str(path), part.sha256, event.sha256 or "?")


def _decompressed(compressed: Iterator[bytes], layer: Layer) -> Iterator[bytes]:
    """The layer's tar, checked against its diff id and size at its end."""
    diff = hashlib.sha256()
    size = 0
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    for chunk in compressed:
        data = decompressor.decompress(chunk)
        if data:
            diff.update(data)
            size += len(data)
            if size > layer.size:
                raise LoadError(f"layer {layer.number} ({layer.diff_id}) decompresses to more than its {layer.size} bytes")
            yield data
    if size != layer.size or "sha256:" + diff.hexdigest() != layer.diff_id:
        raise ChecksumMismatch(f"layer {layer.number} (decompressed)", layer.diff_id, "sha256:" + diff.hexdigest())


def _gzipped(data: Iterator[bytes], threads: int) -> Iterator[bytes]:
    """gzip members of GZIP_BLOCK-sized blocks, compressed by ``threads`` threads, in order."""
    pending: deque[Future[bytes]] = deque()
    block = bytearray()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gzip") as pool:
        for chunk in data:
            block += chunk
            while len(block) >= GZIP_BLOCK:
                pending.append(pool.submit(gzip.compress, bytes(block[:GZIP_BLOCK]), GZIP_LEVEL, mtime=0))
                del block[:GZIP_BLOCK]
                while len(pending) > threads * 2:
                    yield pending.popleft().result()
        if block or not pending:
            pending.append(pool.submit(gzip.compress, bytes(block), GZIP_LEVEL, mtime=0))
        while pending:
            yield pending.popleft().result()


class _GzipDigests:
    """diff id -> (digest, size) of the gzip blob push makes of it, kept in a small JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.known: dict[str, list[Any]] = json.loads(path.read_bytes())
        except (OSError, ValueError):
            self.known = {}

    @staticmethod
    def _key(diff_id: str) -> str:
        return f"{diff_id} gzip-{GZIP_LEVEL} block-{GZIP_BLOCK}"

    def get(self, diff_id: str) -> tuple[str, str, int] | None:
        found = self.known.get(self._key(diff_id))
        if isinstance(found, list) and len(found) == 2:
            return "", str(found[0]), int(found[1])
        return None

    def put(self, diff_id: str, digest: str, size: int) -> None:
        self.known[self._key(diff_id)] = [digest, size]
        try:
            write_atomic(self.path, json.dumps(self.known, indent=1, sort_keys=True).encode())
        except OSError:
            pass  # a read-only cache only costs a recompression on the next run
