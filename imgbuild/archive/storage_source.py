"""Layers read straight from a local engine's storage instead of through its save API.

Both engines write a whole save to a temporary file before they send its first byte, so an archive that
waits for the save API waits for a full copy of the image first. The exact tar stream of a layer is also
kept in storage, in two pieces: the layer's files (Podman's overlay ``diff`` folder or vfs layer folder,
Docker Engine's overlay2 ``diff`` folder) and its tar-split metadata, which holds every tar header and
padding byte in order and names the files whose contents go between them. Writing the headers and the
files' contents in that order gives the layer's tar stream byte for byte, as the engines' own exports do.

Nothing read here is trusted: the archive hashes every layer as it streams and a layer whose sha256 is not
its diff id is discarded and taken from the save API instead (imgbuild/archive/archive.py). Images are found by
id, and the config is hashed against that id too.

Layout read (both documented by their projects' source; nothing here writes to storage):
- Podman (containers/storage), GraphRoot from the engine's info: ``<driver>-images/images.json`` (image id
  -> top layer id), the config as the big-data file ``<driver>-images/<id>/=<base64 of "sha256:<id>">``,
  ``<driver>-layers/layers.json`` (layer id -> parent, diff digest), ``<driver>-layers/<id>.tar-split.gz``
  and the files under ``overlay/<id>/diff`` or ``vfs/dir/<id>``.
- Docker Engine with overlay2, DockerRootDir from its info: the config at
  ``image/overlay2/imagedb/content/sha256/<id>``; per layer ``image/overlay2/layerdb/sha256/<chain id>/``
  with ``cache-id`` and ``tar-split.json.gz``, the files under ``overlay2/<cache id>/diff``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import posixpath
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imgbuild.archive.layer_pipeline import LayerArchiver, LayerMismatch
from imgbuild.archive.save_stream import SavedArchive
from imgbuild.archive.sources import SourceImage
from imgbuild.engine.connect import Engine
from imgbuild.foundation.errors import ImgbuildError
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent

CHUNK = 4 * 1024 * 1024
KEPT_ENTRIES = 32 * 1024 * 1024  # a layer's tar-split entries are kept from its size pass up to this many bytes
_ENTRY_OVERHEAD = 200  # bytes of memory per kept entry besides its header bytes and name
FILE_ENTRY = 1  # tar-split entry types: a file whose contents come from the layer's files
SEGMENT_ENTRY = 2  # raw tar bytes (headers, padding, the end-of-archive blocks)
PODMAN_DRIVERS = {"overlay": "overlay", "vfs": "vfs"}


class StorageUnavailable(ImgbuildError):
    """The engine's storage cannot be read from here; ``reason`` says why (remote engine, driver, access)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LayerUnreadable(ImgbuildError):
    """One layer's storage is incomplete or inconsistent (missing tar-split, a file that is not there)."""


@dataclass(frozen=True)
class StoredLayer:
    diff_id: str
    tar_split: Path  # gzip-compressed JSON lines, one tar-split entry each
    files: Path  # the folder holding the layer's files by their tar names


@dataclass(frozen=True)
class StoredImage:
    id: str
    config: bytes
    layers: list[StoredLayer]


class LayerStore:
    """Where one engine keeps image configs and layers; ``image(id)`` finds one image's pieces."""

    def __init__(self, kind: str, root: Path, driver: str) -> None:
        self.kind = kind
        self.root = root
        self.driver = driver

    def describe(self) -> str:
        return f"{self.kind} {self.driver} storage at {self.root}"

    def image(self, image_id: str) -> StoredImage:
        digest = image_id.removeprefix("sha256:")
        config = self._config(digest)
        if hashlib.sha256(config).hexdigest() != digest:
            raise LayerUnreadable(f"the stored config of {image_id} does not hash to its id")
        diff_ids = (json.loads(config).get("rootfs") or {}).get("diff_ids") or []
        if self.kind == "podman":
            layers = self._podman_layers(digest, diff_ids)
        else:
            layers = self._docker_layers(diff_ids)
        return StoredImage(id=image_id, config=config, layers=layers)

    def _config(self, digest: str) -> bytes:
        if self.kind == "podman":
            key = base64.b64encode(f"sha256:{digest}".encode()).decode()
            path = self.root / f"{self.driver}-images" / digest / f"={key}"
        else:
            path = self.root / "image" / self.driver / "imagedb" / "content" / "sha256" / digest
        try:
            return path.read_bytes()
        except OSError as exc:
            raise LayerUnreadable(f"no config for sha256:{digest} in {self.describe()}: {exc}") from exc

    def _podman_layers(self, digest: str, diff_ids: list[str]) -> list[StoredLayer]:
        images = _read_json(self.root / f"{self.driver}-images" / "images.json")
        layers = {entry.get("id"): entry for entry in _read_json(self.root / f"{self.driver}-layers" / "layers.json")}
        top = next((entry.get("layer") for entry in images if entry.get("id") == digest), None)
        chain: list[dict] = []
        while top:
            entry = layers.get(top)
            if entry is None:
                raise LayerUnreadable(f"layer {top} of sha256:{digest} is not in {self.describe()}")
            chain.append(entry)
            top = entry.get("parent")
        chain.reverse()
        if [entry.get("diff-digest") for entry in chain] != diff_ids:
            raise LayerUnreadable(f"the stored layers of sha256:{digest} do not match its config's diff ids")
        folder = {"overlay": "overlay/{}/diff", "vfs": "vfs/dir/{}"}[self.driver]
        return [StoredLayer(diff_id=entry["diff-digest"],
                            tar_split=self.root / f"{self.driver}-layers" / f"{entry['id']}.tar-split.gz",
                            files=self.root / folder.format(entry["id"])) for entry in chain]

    def _docker_layers(self, diff_ids: list[str]) -> list[StoredLayer]:
        found = []
        chain_id = ""
        for diff_id in diff_ids:
            chain_id = diff_id if not chain_id else "sha256:" + hashlib.sha256(f"{chain_id} {diff_id}".encode()).hexdigest()
            entry = self.root / "image" / self.driver / "layerdb" / "sha256" / chain_id.removeprefix("sha256:")
            try:
                cache_id = (entry / "cache-id").read_text().strip()
            except OSError as exc:
                raise LayerUnreadable(f"layer {diff_id} is not in {self.describe()}: {exc}") from exc
            if not cache_id or "/" in cache_id or cache_id in (".", ".."):
                raise LayerUnreadable(f"layer {diff_id} has an unusable cache id in {self.describe()}")
            found.append(StoredLayer(diff_id=diff_id, tar_split=entry / "tar-split.json.gz",
                                     files=self.root / self.driver / cache_id / "diff"))
        return found


def _read_json(path: Path) -> list[dict]:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise LayerUnreadable(f"cannot read {path}: {exc}") from exc
    return value if isinstance(value, list) else []


def open_store(engine: Engine) -> LayerStore:
    """The engine's storage when this process can read it, else StorageUnavailable naming the reason."""
    if not engine.host.startswith("unix://"):
        raise StorageUnavailable(f"the engine at {engine.host} is not on this machine")
    try:
        info = engine.api.info()
    except Exception as exc:
        raise StorageUnavailable(f"the engine did not describe its storage: {exc}") from exc
    driver = str(info.get("Driver") or "")
    root = Path(str(info.get("DockerRootDir") or ""))
    if engine.kind == "podman":
        if driver not in PODMAN_DRIVERS:
            raise StorageUnavailable(f"Podman's storage driver {driver or '(none)'} is not overlay or vfs")
        probe = root / f"{driver}-layers" / "layers.json"
    else:
        if driver != "overlay2":
            raise StorageUnavailable(f"Docker Engine's storage driver {driver or '(none)'} is not overlay2")
        probe = root / "image" / driver / "layerdb"
    if not root.is_absolute() or not os.access(probe, os.R_OK):
        raise StorageUnavailable(f"{probe} cannot be read by this process")
    return LayerStore(engine.kind, root, driver)


@dataclass(frozen=True)
class _Entry:
    segment: bytes | None  # raw tar bytes, or None for a file entry
    name: str = ""
    size: int = 0


def tar_split_entries(layer: StoredLayer) -> Iterator[_Entry]:
    """The layer's tar-split entries, one at a time: a layer of a million files costs no more memory than
    one of ten."""
    try:
        with gzip.open(layer.tar_split, "rb") as lines:
            for line in lines:
                if not line.strip():
                    continue
                raw = json.loads(line)
                kind = raw.get("type")
                if kind == SEGMENT_ENTRY:
                    yield _Entry(segment=base64.b64decode(raw.get("payload") or b""))
                elif kind == FILE_ENTRY:
                    size = int(raw.get("size") or 0)
                    if size:
                        name = (base64.b64decode(raw["name_raw"]).decode("utf-8", "surrogateescape")
                                if raw.get("name_raw") else str(raw.get("name", "")))
                        yield _Entry(segment=None, name=name, size=size)
                else:
                    raise LayerUnreadable(f"{layer.tar_split}: unknown entry type {kind!r}")
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise LayerUnreadable(f"cannot read the tar-split of layer {layer.diff_id}: {exc}") from exc


def sized_entries(layer: StoredLayer, keep: int = KEPT_ENTRIES) -> tuple[int, list[_Entry] | None]:
    """The size of the tar stream the layer's tar-split makes and, when they take less than about ``keep``
    bytes of memory, its entries: then the tar-split is parsed once instead of twice (the 25,000 entries of a
    torch layer take about 14 MiB). Past ``keep`` the entries are dropped (None) and read again for the
    contents, so memory stays bounded (``keep=0``: the size alone, keeping nothing)."""
    size, held = 0, 0
    kept: list[_Entry] | None = []
    for entry in tar_split_entries(layer):
        size += len(entry.segment) if entry.segment is not None else entry.size
        if kept is not None:
            held += len(entry.segment or b"") + len(entry.name) + _ENTRY_OVERHEAD
            kept.append(entry)
            if held > keep:
                kept = None
    return size, kept


def _file_path(root: Path, name: str) -> Path:
    """The file a tar name means, inside ``root`` whatever the name holds ("/" and ".." cannot leave it)."""
    clean = posixpath.normpath("/" + name).lstrip("/")
    if not clean:
        raise LayerUnreadable(f"tar-split names no file: {name!r}")
    return root / clean


def layer_chunks(layer: StoredLayer, entries: Iterable[_Entry]) -> Iterator[bytearray]:
    """The layer's tar stream in pieces of CHUNK bytes (the last one shorter): headers from tar-split,
    contents read straight into the piece being filled (one copy from the page cache, none after)."""
    piece = bytearray(CHUNK)
    view = memoryview(piece)
    fill = 0
    for entry in entries:
        if entry.segment is not None:
            data = memoryview(entry.segment)
            while data:
                taken = min(len(data), CHUNK - fill)
                view[fill:fill + taken] = data[:taken]
                fill += taken
                data = data[taken:]
                if fill == CHUNK:
                    yield piece
                    piece, fill = bytearray(CHUNK), 0
                    view = memoryview(piece)
            continue
        path = _file_path(layer.files, entry.name)
        left = entry.size
        try:
            with open(path, "rb", buffering=0) as handle:
                while left:
                    got = handle.readinto(view[fill:fill + min(left, CHUNK - fill)])
                    if not got:
                        raise LayerUnreadable(f"{path} is shorter than layer {layer.diff_id} says")
                    fill += got
                    left -= got
                    if fill == CHUNK:
                        yield piece
                        piece, fill = bytearray(CHUNK), 0
                        view = memoryview(piece)
        except OSError as exc:
            raise LayerUnreadable(f"cannot read {path} of layer {layer.diff_id}: {exc}") from exc
    if fill:
        yield piece[:fill]


class Prefetched:
    """A layer's tar-split read and its chunks produced by a background thread, a bounded number ahead of
    the consumer, so the next layers are read from storage while earlier ones are still being compressed."""

    def __init__(self, layer: StoredLayer, depth: int = 8, after: "Prefetched | None" = None) -> None:
        self.layer = layer
        # The size pass waits for the previous layer's: parsing tar-split is Python work, and two at once
        # would delay the first layer's start by sharing the interpreter.
        self._after = after
        self._queue: queue.Queue[bytearray | BaseException | None] = queue.Queue(depth)
        self._size: int | BaseException | None = None
        self._sized = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True, name=f"storage-{layer.diff_id[7:19]}")
        self._thread.start()

    def size(self) -> int:
        """The layer's tar size (waits for its tar-split to be read); LayerUnreadable if it cannot be."""
        self._sized.wait()
        if isinstance(self._size, BaseException):
            raise self._size
        assert self._size is not None
        return self._size

    def _pump(self) -> None:
        if self._after is not None:
            self._after._sized.wait()
            self._after = None
        if self._stop.is_set():
            self._size = LayerUnreadable(f"layer {self.layer.diff_id}: reading it was stopped")
            self._sized.set()
            return
        try:
            self._size, kept = sized_entries(self.layer)
        except BaseException as exc:
            self._size = exc
            return
        finally:
            self._sized.set()
        try:
            entries = kept if kept is not None else tar_split_entries(self.layer)
            for chunk in layer_chunks(self.layer, entries):
                if self._stop.is_set():
                    return
                self._queue.put(chunk)
            self._queue.put(None)
        except BaseException as exc:  # raised again in the consumer's thread
            self._queue.put(exc)

    def __iter__(self) -> Iterator[memoryview]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield memoryview(item)

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass


@dataclass
class StorageRead:
    """What reading a set's images from storage gave: the same view of them a save stream gives, and the
    images that had to go through the save API instead (with why)."""

    saved: SavedArchive
    fallbacks: dict[str, str] = field(default_factory=dict)  # image ref -> reason


def read_images(store: LayerStore, images: list[SourceImage], archiver: LayerArchiver,
                save_api: Callable[[list[str]], SavedArchive], progress: ProgressCallback, task: str,
                ahead: int = 2) -> StorageRead:
    """Every image's layers from storage into ``archiver``, ``ahead`` layers read in advance. An image whose
    storage is incomplete, or one of whose layers does not hash to its diff id, goes through ``save_api``."""
    result = StorageRead(SavedArchive())
    found: list[tuple[SourceImage, StoredImage]] = []
    for image in images:
        try:
            found.append((image, store.image(image.id)))
        except LayerUnreadable as exc:
            result.fallbacks[image.ref] = str(exc)
    queued: dict[str, StoredLayer] = {}  # each distinct layer once, in image order
    for _, stored in found:
        for layer in stored.layers:
            queued.setdefault(layer.diff_id, layer)
    failed = _archive_layers(store, list(queued.values()), archiver, progress, task, ahead)
    manifest = []
    for image, stored in found:
        bad = [layer.diff_id for layer in stored.layers if layer.diff_id in failed]
        if bad:
            result.fallbacks[image.ref] = f"layer {bad[0]} did not come out of storage intact"
            continue
        config_name = stored.id.removeprefix("sha256:") + ".json"
        result.saved.small_files[config_name] = stored.config
        for layer in stored.layers:
            result.saved.layer_members[_member(layer.diff_id)] = layer.diff_id
        manifest.append({"Config": config_name, "RepoTags": image.tags,
                         "Layers": [_member(layer.diff_id) for layer in stored.layers]})
    if result.fallbacks:
        for ref, reason in result.fallbacks.items():
            progress(ProgressEvent(task=task, message=f"{ref}: {reason}; reading it through the save API"))
        api = save_api(list(result.fallbacks))
        manifest += api.docker_manifest()
        result.saved.small_files.update(api.small_files)
        result.saved.layer_members.update(api.layer_members)
        result.saved.aliases.update(api.aliases)
    result.saved.small_files["manifest.json"] = json.dumps(manifest).encode()
    return result


def _archive_layers(store: LayerStore, layers: list[StoredLayer], archiver: LayerArchiver,
                    progress: ProgressCallback, task: str, ahead: int) -> set[str]:
    """Each layer into the archiver, the next ``ahead`` ones already being read; the diff ids that failed."""
    failed: set[str] = set()
    window: list[Prefetched] = []
    last: Prefetched | None = None
    try:
        for index, layer in enumerate(layers):
            while len(window) < ahead and index + len(window) < len(layers):
                last = Prefetched(layers[index + len(window)], after=last)
                window.append(last)
            current = window.pop(0)
            try:
                archiver(_member(layer.diff_id), current.size(), iter(current), expected=layer.diff_id)
            except (LayerUnreadable, LayerMismatch) as exc:
                failed.add(layer.diff_id)
                progress(ProgressEvent(task=task, message=f"layer {layer.diff_id} from {store.describe()}: {exc}"))
            finally:
                current.close()
    finally:
        for pending in window:
            pending.close()
    return failed


def _member(diff_id: str) -> str:
    return diff_id.removeprefix("sha256:") + ".tar"
