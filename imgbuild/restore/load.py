"""Load a set's images into an engine: volume parts -> zstd -> docker-archive tar built on the fly -> load API.

Nothing is written to disk by imgbuild: parts are read in on-disc order by a reader thread, hashed by a
second thread, decompressed here and sent as the body of `POST /images/load` (its length is known up front).
Where the engine allows it (Docker's classic store, Podman), the layers go out in several uploads, so that the
engine imports one group of layers while the next is read (load_steps.py); LoadOptions.whole_archive sends one.

Why a bad part can never leave a tagged image behind (both engines checked, see tests/test_load.py):
- each part's size and sha256 are checked when its last byte has been read, and each layer's size when it
  ends; a mismatch raises inside the body generator, which aborts the HTTP request;
- the tar carries manifest.json last, so an aborted body lacks it and the engine imports nothing; loaded in
  steps, only the last upload holds the set's images, and the step images of earlier ones are removed;
- the tar names no tags: images are tagged only after the engine reported them and their ids matched.
Images already present (same id) are not sent again, so a rerun continues where an earlier one stopped.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import zstandard

from imgbuild.discs.locate import LocatedSet, identify_volume, locate_set, open_volume
from imgbuild.discs.readahead import CHUNK_SIZE, FileChunk, FileEnd, FileStart, HashedReadAhead
from imgbuild.discs.sources import VolumeFile, VolumeSource
from imgbuild.engine.connect import Engine
from imgbuild.engine.docker_archive import ArchiveImage, ArchiveLayer, post_archive
from imgbuild.engine.image_ids import describe, find_set_image
from imgbuild.foundation.errors import (
    ArchiveError,
    ChecksumMismatch,
    FileFault,
    LoadError,
    Remedy,
    UsageError,
    VolumeFileError,
)
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent, no_progress
from imgbuild.restore.layer_content import ContentSummary, TarScanner, summarize
from imgbuild.restore.load_checks import check_configs, check_docker_manifest, tag_conflicts
from imgbuild.restore.load_steps import send_images
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import Image, Layer, Part, SetManifest


@dataclass(frozen=True)
class VolumeRequest:
    """Asked of the user (LoadOptions.ask_volume) when a needed volume is not among the folders given."""

    number: int
    label: str
    reason: str


AskVolume = Callable[[VolumeRequest], Path | None]


@dataclass(frozen=True)
class LoadOptions:
    catalog: Path | None = None
    images: tuple[str, ...] = ()
    ask_volume: AskVolume | None = None
    chunk_size: int = CHUNK_SIZE
    set_id: str | None = None  # which set, when the folders hold volumes of several
    force: bool = False  # move the set's tags even when the engine has them on other images
    refuse_devices: bool = False  # stop (nothing loaded) at a layer holding a device node
    whole_archive: bool = False  # one upload even where the engine can import in steps (load_steps.py)
    step_bytes: int = 0  # volume bytes read per step; 0: chosen from the set's size (load_steps.py)


@dataclass(frozen=True)
class LoadedImage:
    number: int
    id: str
    tags: tuple[str, ...]
    role: str | None
    status: str  # "loaded" or "present"
    # The engine's own id: the set's id (config digest), except in Docker's containerd image store,
    # which names an image by its manifest digest.
    engine_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "id": self.id, "tags": list(self.tags), "role": self.role,
                "status": self.status, "engine_id": self.engine_id or self.id}


@dataclass(frozen=True)
class LoadResult:
    set_id: str
    name: str
    engine: str
    images: tuple[LoadedImage, ...]
    layers_sent: int
    bytes_read: int
    bytes_sent: int
    seconds: float
    content: ContentSummary = ContentSummary()  # device nodes, setuid files, unsafe paths in the layers sent
    uploads: int = 0  # load requests sent: 1 for the whole archive, more when loaded in steps

    def to_json(self) -> dict[str, Any]:
        return {"set_id": self.set_id, "name": self.name, "engine": self.engine,
                "images": [i.to_json() for i in self.images], "layers_sent": self.layers_sent, "uploads": self.uploads,
                "bytes_read": self.bytes_read, "bytes_sent": self.bytes_sent, "seconds": round(self.seconds, 3),
                "content": self.content.to_json()}


def load_set(engine: Engine, dirs: Sequence[Path], options: LoadOptions = LoadOptions(),
             progress: ProgressCallback = no_progress) -> LoadResult:
    """Load the chosen images (default: all) of the set found under ``dirs`` into ``engine``."""
    return load_located(engine, locate_set(dirs, options.catalog, options.set_id), options, progress)


def load_located(engine: Engine, located: LocatedSet, options: LoadOptions = LoadOptions(),
                 progress: ProgressCallback = no_progress) -> LoadResult:
    """Load the chosen images (default: all) of a located set into ``engine``; each part is checked as it
    streams past, so a disc is read once and the load is its verification (of the parts it needs)."""
    started = time.monotonic()
    manifest = located.manifest
    chosen = select_images(manifest, options.images)
    engine_ids = {image.number: found for image in chosen
                  if (found := _engine_id(engine, located, image)) is not None}
    present = set(engine_ids)
    to_load = [image for image in chosen if image.number not in present]
    check_docker_manifest(manifest, located.volumes)
    conflicts = tag_conflicts(engine, chosen, engine_ids, lambda ref: engine_ref(engine, ref))
    if conflicts and not options.force:
        raise LoadError("the engine has tags of this set on other images: " + "; ".join(map(str, conflicts))
                        + "; nothing was loaded or tagged",
                        remedy=Remedy.MOVE_TAGS)
    stream = _LayerStreams(located, to_load, options, progress)
    uploads = 0
    if to_load:
        stream.preflight()
        configs = [read_config(located, image) for image in to_load]
        check_configs(zip(to_load, configs))
        archive_images = [ArchiveImage(config, tuple(image.layers)) for config, image in zip(configs, to_load)]
        read_order = [(layer.diff_id, layer.compressed_size) for layer in stream.layers]
        try:
            uploads = send_images(engine, manifest.set_id, archive_images, read_order, stream.archive_layers,
                                  lambda body: post_archive(engine, body), options.whole_archive, options.step_bytes)
        finally:
            stream.close()
        for image in to_load:
            found = _engine_id(engine, located, image)
            if found is None:
                raise LoadError(f"{describe(engine)} accepted the archive but has no image {image.id} afterwards")
            engine_ids[image.number] = found
    for image in chosen:
        _tag(engine, image, engine_ids[image.number])
    results = tuple(LoadedImage(i.number, i.id, tuple(i.tags), i.role,
                                "present" if i.number in present else "loaded", engine_ids[i.number])
                    for i in chosen)
    return LoadResult(set_id=manifest.set_id, name=manifest.name, engine=engine.kind, images=results,
                      layers_sent=len(stream.layers), bytes_read=stream.bytes_read, bytes_sent=stream.bytes_sent,
                      seconds=time.monotonic() - started, content=summarize(stream.scanners),
                      uploads=uploads)


def image_names(image: Image) -> set[str]:
    """Every way a user may name an image: its tags with and without "localhost/" and ":latest"."""
    names = {image.id, image.id.removeprefix("sha256:")[:12]}
    if image.role:
        names.add(image.role)
    for tag in image.tags:
        for ref in (tag, tag.removeprefix("localhost/")):
            names.add(ref)
            if ref.endswith(":latest"):
                names.add(ref.removesuffix(":latest"))
    return names


def select_images(manifest: SetManifest, wanted: Sequence[str]) -> list[Image]:
    if not wanted:
        return list(manifest.images)
    chosen: list[Image] = []
    for name in wanted:
        match = [image for image in manifest.images if name in image_names(image)]
        if not match:
            known = ", ".join(t for i in manifest.images for t in i.tags) or "(untagged)"
            raise UsageError(f"no image {name!r} in set {manifest.name}; it holds {known}")
        chosen += [image for image in match if image not in chosen]
    return chosen


def _engine_id(engine: Engine, located: LocatedSet, image: Image) -> str | None:
    """The engine's id of the set's image, or None when the engine does not have it (image_ids.py)."""
    return find_set_image(engine, image.id, lambda: read_config(located, image),
                          [engine_ref(engine, tag) for tag in image.tags if "@" not in tag])


def read_config(located: LocatedSet, image: Image) -> bytes:
    """The image's config from the first volume that has a good copy (every volume holds all configs); read
    once per volume source, however often it is asked for."""
    reasons = []
    for source in located.volumes.values():
        try:
            data = source.read_small(image.config.path, layout.MAX_CONFIG_BYTES)
        except ArchiveError as exc:
            reasons.append(str(exc))
            continue
        if hashlib.sha256(data).hexdigest() == image.config.sha256:
            return data
        reasons.append(f"{source.shown(image.config.path)}: sha256 differs from the manifest")
    raise LoadError(f"no good copy of {image.config.path} (image {image.id}): " + "; ".join(reasons or ["no volume"]))


def engine_ref(engine: Engine, ref: str) -> str:
    """The reference to tag with: Podman's compatible API would put Docker Hub's registry and `library/` in
    front of a name without a registry part, while Podman itself names local images localhost/NAME; keep
    Podman's convention."""
    first = ref.split("/", 1)[0]
    has_domain = "/" in ref and ("." in first or ":" in first or first == "localhost")
    return ref if engine.kind != "podman" or has_domain else f"localhost/{ref}"


def _tag(engine: Engine, image: Image, engine_id: str) -> None:
    for ref in image.tags:
        if "@" in ref:
            continue
        ref = engine_ref(engine, ref)
        repository, tag = ref, "latest"
        if ref.rfind(":") > ref.rfind("/"):
            repository, tag = ref.rsplit(":", 1)
        try:
            engine.api.tag(engine_id, repository, tag, force=True)
        except docker.errors.APIError as exc:
            raise LoadError(f"{describe(engine)}: cannot tag {engine_id} as {ref}: {exc.explanation or exc}") \
                from exc


class _LayerStreams:
    """The layers the chosen images need, streamed from their parts in on-disc order."""

    def __init__(self, located: LocatedSet, images: list[Image], options: LoadOptions,
                 progress: ProgressCallback) -> None:
        self.located = located
        self.manifest = located.manifest
        self.options = options
        self.progress = progress
        self.volumes = dict(located.volumes)
        needed = {d for image in images for d in image.layers}
        position = {(v.number, f.path): i for v in self.manifest.volumes for i, f in enumerate(v.files)}
        self.layers: list[Layer] = sorted(
            (layer for layer in self.manifest.layers if layer.diff_id in needed),
            key=lambda layer: (layer.parts[0].volume, position[(layer.parts[0].volume, layer.parts[0].path)]))
        self.total = sum(layer.compressed_size for layer in self.layers)
        self.bytes_read = 0
        self.bytes_sent = 0
        self._checked: set[int] = set()
        self._reader: HashedReadAhead | None = None
        self._events: Iterator[Any] | None = None
        self.scanners: list[TarScanner] = []

    def preflight(self) -> None:
        """Before anything is sent: every needed part on the volumes at hand is a regular file of the right size;
        without --prompt, every needed volume must be at hand."""
        missing = sorted({p.volume for layer in self.layers for p in layer.parts} - set(self.volumes))
        if missing and self.options.ask_volume is None:
            names = "; ".join(self.located.label(n) for n in missing)
            raise LoadError(f"volumes needed but not found: {names}",
                            hint="name their folders too", remedy=Remedy.ASK_FOR_VOLUMES)
        for number in sorted(self.volumes):
            self._check_volume(number)

    def _check_volume(self, number: int) -> None:
        if number in self._checked:
            return
        source = self.volumes[number]
        for layer in self.layers:
            for part in layer.parts:
                if part.volume == number:
                    _check_part(source, part)
        self._checked.add(number)

    def _paths(self) -> Iterator[VolumeFile]:
        """Part files in stream order; asks for a volume when it is not at hand (runs in the reader thread)."""
        for layer in self.layers:
            for part in layer.parts:
                if part.volume not in self.volumes:
                    self._ask(part.volume)
                yield VolumeFile(self.volumes[part.volume], part.path)

    def _ask(self, number: int) -> None:
        reason = "needed next"
        while True:
            assert self.options.ask_volume is not None
            answer = self.options.ask_volume(VolumeRequest(number, self.located.label(number), reason))
            if answer is None:
                raise LoadError(f"volume {self.located.label(number)} is needed and was not given")
            try:
                source = open_volume(answer)
            except ArchiveError as exc:
                reason = str(exc)
                continue
            if identify_volume(source, self.manifest) == number:
                self.volumes[number] = source
                self._check_volume(number)
                return
            reason = f"{answer} is not that volume"

    def archive_layers(self) -> dict[str, ArchiveLayer]:
        self._reader = HashedReadAhead(self._paths(), chunk_size=self.options.chunk_size)
        self._events = iter(self._reader)
        return {layer.diff_id: ArchiveLayer(layer.diff_id, layer.size, lambda layer=layer: self._layer_bytes(layer))
                for layer in self.layers}

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def _layer_bytes(self, layer: Layer) -> Iterator[bytes]:
        assert self._events is not None
        source = _PartsSource(self, layer)
        window = 1 << max(self.manifest.compression.window_log or 27, 27)
        reader = zstandard.ZstdDecompressor(max_window_size=window).stream_reader(
            source, read_size=self.options.chunk_size, read_across_frames=True)
        scanner = TarScanner(layer.number)
        self.scanners.append(scanner)
        try:
            while True:
                data = reader.read(self.options.chunk_size)
                if not data:
                    break
                scanner.feed(data)
                if self.options.refuse_devices and scanner.counts.get("device"):
                    # Before these bytes reach the engine: the load stream ends unfinished, nothing is loaded.
                    entry = next(e for e in scanner.entries if e.kind == "device")
                    raise LoadError(f"layer {layer.number} ({layer.diff_id}) holds a device node: {entry.name} "
                                    f"({entry.detail}); nothing was loaded (device nodes refused)")
                self.bytes_sent += len(data)
                yield data
        except zstandard.ZstdError as exc:
            # Name the file: a damaged part usually fails its sha256 once read to its end.
            where = source.drain_part()
            raise LoadError(f"{where}: zstd stream of layer {layer.number} ({layer.diff_id}) is damaged: {exc}") \
                from exc
        source.finish()


class _PartsSource:
    """A file-like object over one layer's parts as they come out of the reader; checks each part at its end."""

    def __init__(self, streams: _LayerStreams, layer: Layer) -> None:
        self.streams = streams
        self.layer = layer
        self.index = 0
        self.current: VolumeFile | Path | None = None

    def read(self, size: int = -1) -> bytes:
        assert self.streams._events is not None
        while self.index < len(self.layer.parts):
            event = next(self.streams._events)
            if isinstance(event, FileStart):
                self.current = event.path
            elif isinstance(event, FileChunk):
                self.streams.bytes_read += len(event.data)
                self.streams.progress(ProgressEvent(task=f"load {self.streams.manifest.name}",
                                                    done=self.streams.bytes_read, total=self.streams.total))
                return event.data
            else:
                self._check_end(self.layer.parts[self.index], event)
                self.index += 1
        return b""

    def _check_end(self, part: Part, event: FileEnd) -> None:
        shown = str(self.current or part.path)
        if event.error is not None:
            raise LoadError(f"{shown}: {event.error}")
        if event.size != part.size:
            raise LoadError(f"{shown}: {event.size} bytes read, the manifest says {part.size}")
        if event.sha256 != part.sha256:
            raise ChecksumMismatch(shown, part.sha256, event.sha256 or "?")

    def drain_part(self) -> str:
        """Read the current part to its end (raising ChecksumMismatch when it is bad); returns its name."""
        index = self.index
        while self.index == index and self.index < len(self.layer.parts):
            self.read()
        return str(self.current or self.layer.parts[min(index, len(self.layer.parts) - 1)].path)

    def finish(self) -> None:
        """The zstd stream ended: the rest of the layer's parts must be empty (no trailing bytes)."""
        if self.read():
            raise LoadError(f"layer {self.layer.number} ({self.layer.diff_id}): data after the end of its zstd stream")


def _check_part(source: VolumeSource, part: Part) -> None:
    try:
        size = source.size(part.path)
    except VolumeFileError as exc:
        if exc.fault is FileFault.MISSING:
            raise LoadError(f"{source.shown(part.path)}: missing (volume {part.volume})") from None
        raise
    if size != part.size:
        raise LoadError(f"{source.shown(part.path)}: {size} bytes, the manifest says {part.size}")
