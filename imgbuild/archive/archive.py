"""`imgbuild archive`: images -> one engine save stream -> layers -> zstd -> volumes that hash as they write.

One save of all images, so a layer shared by several images is read once; each layer is hashed
(uncompressed, its diff id), compressed by zstd and cut into parts by the volume writer,
which hashes the compressed bytes as it writes them (imgbuild/archive/layer_pipeline.py runs these stages side by
side). Nothing is read back. The set id is derived from the
image ids and the options, so rerunning the same command after an interruption finds the same set: a
complete set is reported as it is, the leftovers of an interrupted one are removed and the set is written
again. FORMAT.md describes what ends up on disc.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import imgbuild
from imgbuild.archive.layer_pipeline import LONG_WINDOW_LOG, LayerArchiver, LayerCompression
from imgbuild.archive.save_stream import SavedArchive, read_save_stream
from imgbuild.archive.sources import ResolvedSources, resolve_sources
from imgbuild.archive.storage_source import StorageUnavailable, open_store, read_images
from imgbuild.archive.volume_docs import SetFacts, readme, restore_script
from imgbuild.archive.volume_writer import VolumeState, VolumeWriter, file_cost
from imgbuild.build.sbom import cyclonedx_json, image_sbom, summarize
from imgbuild.discs.iso import make_volume_isos
from imgbuild.engine.connect import Engine
from imgbuild.engine.image_ids import describe
from imgbuild.foundation.atomicfile import write_file_atomic
from imgbuild.foundation.errors import ArchiveError, ImgbuildError, OptionError, Remedy, SbomError
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent, no_progress
from imgbuild.parity.volumes import ParityOptions, add_parity_volumes
from imgbuild.setformat import layout
from imgbuild.setformat.blockhash import BLOCK_SIZE
from imgbuild.setformat.manifest import (
    Compression,
    ConfigFile,
    EngineInfo,
    Image,
    Media,
    SbomFile,
    SetManifest,
    Tool,
    Volume,
    dump_manifest,
    parse_manifest,
)
from imgbuild.setformat.volume_files import docker_manifest, format_doc, sums_file

SAVE_CHUNK = 4 * 1024 * 1024
LAYER_SOURCES = ("auto", "storage", "api")


@dataclass(frozen=True)
class ArchiveOptions:
    out: Path
    media: str | None = "bd25"
    media_size: int | None = None
    level: int = 3
    long: bool = False
    catalog: Path = Path(layout.CATALOG_DEFAULT)
    threads: int = -1  # zstd worker threads; -1: one per CPU
    parity: int = 0  # parity volumes (imgbuild/parity/volumes.py): any `parity` lost volumes can be rebuilt
    iso: bool = False  # also write OUT/<volume folder>.iso per volume (imgbuild/discs/iso.py)
    # Where layers are read: "storage" (the engine's layer storage, imgbuild/archive/storage_source.py), "api" (its
    # save API) or "auto" (storage when this process can read it, else the save API).
    source: str = "auto"


@dataclass(frozen=True)
class ArchiveResult:
    set_id: str
    name: str
    volumes: list[Path]
    catalog: Path
    media: str
    capacity: int
    images: list[dict[str, Any]]
    layers: int
    uncompressed_bytes: int
    compressed_bytes: int
    seconds: float
    already_complete: bool = False
    isos: list[Path] = field(default_factory=list)
    # "storage", "api", "storage+api" (some images needed the save API), "none" (the set was already complete)
    layer_source: str = "none"
    fallbacks: dict[str, str] = field(default_factory=dict)  # image ref -> why it went through the save API

    def to_json(self) -> dict[str, Any]:
        return {
            "set_id": self.set_id, "name": self.name, "volumes": [str(v) for v in self.volumes],
            "catalog": str(self.catalog), "media": self.media, "capacity": self.capacity,
            "images": self.images, "layers": self.layers, "uncompressed_bytes": self.uncompressed_bytes,
            "compressed_bytes": self.compressed_bytes, "seconds": round(self.seconds, 3),
            "already_complete": self.already_complete, "isos": [str(p) for p in self.isos],
            "layer_source": self.layer_source, "fallbacks": self.fallbacks,
        }


def set_id_for(sources: ResolvedSources, capacity: int, options: ArchiveOptions) -> str:
    """Same images, tags, media and compression -> same set id, so a rerun finds its leftovers."""
    payload = {
        "format_version": layout.FORMAT_VERSION,
        "images": [[image.id, image.tags, image.role] for image in sources.images],
        "capacity": capacity, "level": options.level, "long": options.long,
        "recipe": sources.recipe.recipe.sha256 if sources.recipe else None,
    }
    if options.parity:
        payload["parity"] = options.parity
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def archive(engine: Engine, sources: list[str], options: ArchiveOptions,
            progress: ProgressCallback = no_progress) -> ArchiveResult:
    """Archive images (or a recipe's base and app images) into volumes under ``options.out``."""
    started = time.monotonic()
    try:
        profile, capacity = layout.media_capacity(options.media, options.media_size)
    except KeyError:
        raise OptionError("media", f"{options.media!r} is not known; choose one of "
                          f"{', '.join(layout.MEDIA_PROFILES)}", remedy=Remedy.GIVE_MEDIA_SIZE) from None
    if not -7 <= options.level <= 22:
        raise OptionError("level", f"{options.level} is outside zstd's -7..22")
    if options.source not in LAYER_SOURCES:
        raise OptionError("source", f"{options.source!r}: choose one of {', '.join(LAYER_SOURCES)}")
    resolved = resolve_sources(engine, sources)
    set_id = set_id_for(resolved, capacity, options)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)

    existing = _complete_set(out, set_id)
    if existing is not None:
        write_file_atomic(layout.catalog_path(options.catalog, set_id), dump_manifest(existing))
        result = _result(existing, out, options, time.monotonic() - started, already_complete=True)
        return _with_isos(result, existing, options, reuse=True)
    _remove_leftovers(out, set_id)

    writer = VolumeWriter(out, set_id, capacity)
    try:
        manifest, read = _write_set(engine, resolved, writer, profile, capacity, options, progress)
        if options.parity:
            manifest = _add_parity(writer, manifest, options, progress)
        manifest_bytes = dump_manifest(manifest)
        _write_metadata_tail(writer, manifest_bytes)
        write_file_atomic(layout.catalog_path(options.catalog, set_id), manifest_bytes)
        writer.publish()
    except BaseException:
        # Free the space now; a rerun would remove these leftovers anyway (they all end in .partial).
        _remove_leftovers(out, set_id)
        raise
    progress(ProgressEvent(task=f"archive {set_id}", finished=True))
    result = dataclasses.replace(_result(manifest, out, options, time.monotonic() - started), **read)
    return _with_isos(result, manifest, options)


def _add_parity(writer: VolumeWriter, manifest: SetManifest, options: ArchiveOptions,
                progress: ProgressCallback) -> SetManifest:
    """Parity volumes after the data volumes (imgbuild/parity/volumes.py); the writer then treats them like the rest."""
    manifest = add_parity_volumes(writer.staging_folder, manifest, ParityOptions(options.parity), progress)
    for volume in manifest.volumes[len(writer.volumes):]:
        writer.volumes.append(VolumeState(volume.number, writer.staging_folder(volume.number),
                                          sum(file_cost(f.size) for f in volume.files), list(volume.files)))
    return manifest


def _with_isos(result: ArchiveResult, manifest: SetManifest, options: ArchiveOptions,
               reuse: bool = False) -> ArchiveResult:
    if not options.iso:
        return result
    images = make_volume_isos(options.out, manifest.set_id, [(v.number, v.folder) for v in manifest.volumes], reuse)
    return dataclasses.replace(result, isos=[image.path for image in images])


def _write_set(engine: Engine, resolved: ResolvedSources, writer: VolumeWriter, profile: str, capacity: int,
               options: ArchiveOptions, progress: ProgressCallback) -> tuple[SetManifest, dict[str, Any]]:
    task = f"archive {writer.set_id}"
    compression = LayerCompression(options.level, options.long, options.threads)
    archiver = LayerArchiver(writer, compression, progress, task, resolved.total_size)
    progress(ProgressEvent(task=task, done=0, total=resolved.total_size))
    try:
        saved, read = _read_layers(engine, resolved, archiver, options.source, progress, task)
    finally:
        archiver.close()
    layers, stored = archiver.layers, archiver.stored
    images, configs = _images(engine, resolved, saved, stored)
    used = {d for image in images for d in image.layers}
    if used != stored:
        raise ArchiveError(f"the engine's save stream holds layers no image uses: {sorted(stored - used)}")
    images, sboms = _with_sboms(engine, images, progress, task)

    facts = SetFacts(set_id=writer.set_id, name=resolved.name, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     tool_version=imgbuild.__version__, volume_count=len(writer.volumes), images=images,
                     layers=layers, compression_long=options.long, parity_volumes=options.parity,
                     contents=tuple(summarize(data).summary_lines() for data in sboms))
    restore_bytes = restore_script(facts)
    docker_bytes = docker_manifest(images, layers)
    spec = format_doc()
    for volume in writer.volumes:
        for image, config, sbom in zip(images, configs, sboms):
            writer.add_file(volume, image.config.path, config)
            writer.add_file(volume, layout.sbom_path(image.number), sbom)
        writer.add_file(volume, layout.DOCKER_MANIFEST_PATH, docker_bytes)
        writer.add_file(volume, layout.RESTORE_NAME, restore_bytes)
        writer.add_file(volume, layout.FORMAT_DOC_NAME, spec)
        writer.add_file(volume, layout.README_NAME, readme(facts, volume.number))
    return SetManifest(
        set_id=writer.set_id, name=resolved.name, created=facts.created,
        tool=Tool(version=imgbuild.__version__), engine=EngineInfo(kind=engine.kind, version=engine.version),
        media=Media(profile=profile, capacity=capacity),
        compression=Compression(level=options.level, long=options.long,
                                window_log=LONG_WINDOW_LOG if options.long else None),
        volume_count=len(writer.volumes),
        volumes=[Volume(number=v.number, folder=layout.volume_folder(writer.set_id, v.number), files=list(v.files))
                 for v in writer.volumes],
        images=images, layers=layers, recipe=resolved.recipe, block_size=BLOCK_SIZE,
    ), read


def _with_sboms(engine: Engine, images: list[Image], progress: ProgressCallback,
                task: str) -> tuple[list[Image], list[bytes]]:
    """Each image's SBOM (imgbuild/build/sbom.py): the one made at build time, else made now. An image whose
    packages cannot be listed (no python3 in it) gets an SBOM that says so, and a message says it too."""
    with_sbom, sboms = [], []
    for image in images:
        progress(ProgressEvent(task=task, message=f"listing what {', '.join(image.tags) or image.id} holds"))
        try:
            data = image_sbom(engine, image.id, image.tags, image.role)
        except SbomError as exc:
            progress(ProgressEvent(task=task, message=f"{exc.message}; its SBOM says so"))
            data = cyclonedx_json({"not_listed": exc.reason}, image_id=image.id, tags=image.tags,
                                  role=image.role).encode()
        sboms.append(data)
        with_sbom.append(image.model_copy(update={"sbom": SbomFile(
            path=layout.sbom_path(image.number), size=len(data), sha256=hashlib.sha256(data).hexdigest())}))
    return with_sbom, sboms


def _read_layers(engine: Engine, resolved: ResolvedSources, archiver: LayerArchiver, source: str,
                 progress: ProgressCallback, task: str) -> tuple[SavedArchive, dict[str, Any]]:
    """Every layer into ``archiver``, from the engine's storage or through its save API (see ArchiveOptions)."""
    def save_api(refs: list[str]) -> SavedArchive:
        return read_save_stream(_save_stream(engine, refs), archiver)

    refs = [image.ref for image in resolved.images]
    if source == "api":
        return save_api(refs), {"layer_source": "api"}
    try:
        store = open_store(engine)
    except StorageUnavailable as exc:
        if source == "storage":
            raise ArchiveError(f"the engine's layer storage cannot be read: {exc.reason}") from None
        progress(ProgressEvent(task=task, message=f"reading layers through the save API: {exc.reason}"))
        return save_api(refs), {"layer_source": "api"}
    read = read_images(store, resolved.images, archiver, save_api, progress, task)
    layer_source = "storage+api" if read.fallbacks else "storage"
    return read.saved, {"layer_source": layer_source, "fallbacks": read.fallbacks}


def _write_metadata_tail(writer: VolumeWriter, manifest_bytes: bytes) -> None:
    """The manifest and SHA256SUMS, last, on every volume."""
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    sizes = []
    for volume in writer.volumes:
        sums = sums_file(volume.files, manifest_sha)
        sizes.append(file_cost(len(manifest_bytes)) + file_cost(len(sums)))
        write_file_atomic(volume.staging / layout.MANIFEST_NAME, manifest_bytes)
        write_file_atomic(volume.staging / layout.SUMS_NAME, sums)
    writer.check_capacity(sizes)


def _save_stream(engine: Engine, refs: list[str]) -> Iterator[bytes]:
    """GET /images/get?names=...: one docker-archive tar of all images (the SDK saves only one at a time)."""
    api = engine.api
    try:
        response = api._get(api._url("/images/get"), params={"names": refs}, stream=True)
        api._raise_for_status(response)
    except ImgbuildError:
        raise
    except Exception as exc:
        raise ArchiveError(f"the engine refused to save {', '.join(refs)}: {exc}") from exc
    return _coalesced(response.iter_content(1024 * 1024), SAVE_CHUNK)


def _coalesced(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Pieces of at least ``size`` bytes: engines send the stream in 32 KiB HTTP chunks, and handing each
    one to the hash and compression stages separately costs more in overhead than the work itself."""
    pending: list[bytes] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held >= size:
            yield b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


def _images(engine: Engine, resolved: ResolvedSources, saved: SavedArchive,
            stored: set[str]) -> tuple[list[Image], list[bytes]]:
    by_id: dict[str, tuple[bytes, list[str], list[str]]] = {}
    for entry in saved.docker_manifest():
        config = saved.config_bytes(str(entry.get("Config")))
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        diff_ids = [saved.layer_diff_id(str(name)) for name in entry.get("Layers") or []]
        declared = (json.loads(config).get("rootfs") or {}).get("diff_ids")
        if declared != diff_ids:
            raise ArchiveError(f"image {image_id}: the saved layers hash to {diff_ids}, its config says {declared}")
        by_id[image_id] = (config, list(entry.get("RepoTags") or []), diff_ids)
    images, configs = [], []
    for number, source in enumerate(resolved.images, start=1):
        # A set names images by config digest; Docker's containerd image store by manifest digest.
        image_id = saved.config_digest(source.id, set(by_id))
        if image_id is None:
            raise ArchiveError(f"the save stream of {describe(engine)} lacks image {source.ref} ({source.id})")
        config, saved_tags, diff_ids = by_id[image_id]
        tags = source.tags or saved_tags
        images.append(Image(number=number, id=image_id, tags=tags, role=source.role, layers=diff_ids,
                            config=ConfigFile(path=layout.config_path(number), size=len(config),
                                              sha256=image_id.split(":", 1)[1])))
        configs.append(config)
    return images, configs


def _complete_set(out: Path, set_id: str) -> SetManifest | None:
    """The set's manifest when every volume is in place under its final name with all its files."""
    first = out / layout.volume_folder(set_id, 1) / layout.MANIFEST_NAME
    if not first.is_file():
        return None
    data = first.read_bytes()
    try:
        manifest = parse_manifest(data, str(first))
    except ArchiveError:
        return None
    for volume in manifest.volumes:
        folder = out / volume.folder
        if not (folder / layout.SUMS_NAME).is_file():
            return None
        manifest_file = folder / layout.MANIFEST_NAME
        if not manifest_file.is_file() or manifest_file.read_bytes() != data:
            return None
        for entry in volume.files:
            path = folder / entry.path
            if not path.is_file() or path.stat().st_size != entry.size:
                return None
    return manifest


def _remove_leftovers(out: Path, set_id: str) -> None:
    """Remove this set's volume folders, finished or not (only names that are unmistakably ours)."""
    for path in out.iterdir():
        name = path.name.removesuffix(layout.PARTIAL_SUFFIX)
        found = layout.parse_volume_folder(name)
        if found is not None and found[0] == set_id and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)


def _result(manifest: SetManifest, out: Path, options: ArchiveOptions, seconds: float,
            already_complete: bool = False) -> ArchiveResult:
    return ArchiveResult(
        set_id=manifest.set_id, name=manifest.name, volumes=[out / v.folder for v in manifest.volumes],
        catalog=layout.catalog_path(options.catalog, manifest.set_id), media=manifest.media.profile,
        capacity=manifest.media.capacity,
        images=[{"id": i.id, "tags": i.tags, "role": i.role, "layers": len(i.layers)} for i in manifest.images],
        layers=len(manifest.layers), uncompressed_bytes=sum(layer.size for layer in manifest.layers),
        compressed_bytes=sum(layer.compressed_size for layer in manifest.layers), seconds=seconds,
        already_complete=already_complete,
    )
