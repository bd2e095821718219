"""The set manifest (format imgbuild-set, version 1) and its strict parser.

The manifest is the one description of a set: images, their configs and layers, every file of every volume
with its size and sha256. A set on disc may have been tampered with, so ``parse_manifest`` trusts nothing:
every name must be one the layout defines (no ``..``, no absolute path, no separator where none belongs, no
name a symlink or a case-insensitive file system could make collide), every size must add up, every cross
reference must resolve, and an unknown format version is refused. Errors name the offending field.
``dump_manifest`` writes the canonical bytes (sorted keys, fixed indentation) that go on every volume.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from imgbuild import layout
from imgbuild.errors import ManifestError

Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
Size = Annotated[int, Field(ge=0, le=1 << 50)]
Number = Annotated[int, Field(ge=1, le=9999)]
# An image reference as engines report it (registry/path:tag); no spaces, control characters or "..".
ImageTag = Annotated[str, Field(max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")]
# A plain file name (no folder), used for the recipe and lock file names recorded for the record.
BaseName = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")]
MAX_TEXT = 4 * 1024 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Tool(_Model):
    name: Literal["imgbuild"] = "imgbuild"
    version: Annotated[str, Field(max_length=64)]


class EngineInfo(_Model):
    """The engine the images were saved from (for the record; any engine can load the set)."""

    kind: Literal["docker", "podman"]
    version: Annotated[str, Field(max_length=64)]


class Media(_Model):
    profile: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,16}$")]
    capacity: Annotated[int, Field(gt=0, le=1 << 50)]


class Compression(_Model):
    algorithm: Literal["zstd"] = "zstd"
    level: Annotated[int, Field(ge=-7, le=22)]
    # Long-distance matching; window_log is what a decompressor must allow (zstd CLI: --long=N when > 27).
    long: bool
    window_log: Annotated[int, Field(ge=10, le=31)] | None = None


class FileEntry(_Model):
    """One file of a volume, volume-relative path, in the order it was written (its on-disc order)."""

    path: Annotated[str, Field(max_length=64)]
    size: Size
    sha256: Hex64
    # Format 2: SHA-256 of each consecutive block_size block (the last one shorter), to locate damage.
    blocks: list[Hex64] | None = None


class Volume(_Model):
    number: Number
    folder: Annotated[str, Field(max_length=64)]
    # Format 2 adds parity volumes (after the data volumes); see Parity.
    role: Literal["data", "parity"] = "data"
    files: list[FileEntry]


class Parity(_Model):
    """Format 2: the last ``parity_volumes`` volumes hold a Reed-Solomon code of the data volumes' payload.

    Parity stream j = sum over i of coefficients[j][i] * data stream i, byte by byte in GF(2^8) (0x11D);
    FORMAT.md section 9 and imgbuild/erasure.py.
    """

    scheme: Literal["zfec-rs-gf256"]
    data_volumes: Annotated[int, Field(ge=1, le=255)]
    parity_volumes: Annotated[int, Field(ge=1, le=255)]
    length: Size
    coefficients: list[list[Annotated[int, Field(ge=0, le=255)]]]


class Part(_Model):
    """A slice of a layer's zstd stream: bytes [offset, offset + size) of the stream."""

    path: Annotated[str, Field(max_length=64)]
    volume: Number
    offset: Size
    size: Size
    sha256: Hex64


class Layer(_Model):
    number: Number
    diff_id: Digest
    size: Size
    compressed_size: Size
    compressed_sha256: Hex64
    parts: Annotated[list[Part], Field(min_length=1)]


class ConfigFile(_Model):
    path: Annotated[str, Field(max_length=64)]
    size: Annotated[int, Field(gt=0, le=layout.MAX_CONFIG_BYTES)]
    sha256: Hex64


class Image(_Model):
    number: Annotated[int, Field(ge=1, le=layout.MAX_IMAGES)]
    id: Digest
    tags: list[ImageTag]
    role: Literal["base", "app"] | None = None
    config: ConfigFile
    layers: list[Digest]


class TextFile(_Model):
    name: BaseName
    sha256: Hex64
    text: Annotated[str, Field(max_length=MAX_TEXT)]


class RecipeInfo(_Model):
    """The recipe the images were built from, so load-and-run knows the serve command and health check."""

    recipe: TextFile
    checkpoints_lock: TextFile | None = None


class SetManifest(_Model):
    format: Literal["imgbuild-set"] = layout.FORMAT_NAME
    format_version: Literal[1, 2] = layout.FORMAT_VERSION
    set_id: Annotated[str, Field(pattern=layout.SET_ID_RE.pattern)]
    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    created: Annotated[str, Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")]
    tool: Tool
    engine: EngineInfo
    media: Media
    compression: Compression
    volume_count: Annotated[int, Field(ge=1, le=layout.MAX_VOLUMES)]
    volumes: list[Volume]
    images: Annotated[list[Image], Field(min_length=1, max_length=layout.MAX_IMAGES)]
    layers: Annotated[list[Layer], Field(max_length=layout.MAX_LAYERS)]
    recipe: RecipeInfo | None = None
    # Format 2: the block size of every file's ``blocks`` list, and the parity volumes if any.
    block_size: Annotated[int, Field(ge=4096, le=1 << 30)] | None = None
    parity: Parity | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "SetManifest":
        _check_volumes(self)
        _check_format2(self)
        _check_layers(self)
        _check_images(self)
        return self

    def volume(self, number: int) -> Volume:
        return self.volumes[number - 1]

    def layer(self, diff_id: str) -> Layer:
        return next(layer for layer in self.layers if layer.diff_id == diff_id)

    def app_image(self) -> Image | None:
        return next((image for image in self.images if image.role == "app"), None)


class _Fail(ValueError):
    """A consistency failure at a field path; turned into ManifestError by parse_manifest."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _check_volumes(m: SetManifest) -> None:
    if m.volume_count != len(m.volumes):
        raise _Fail("volume_count", f"is {m.volume_count} but {len(m.volumes)} volumes are listed")
    for v_index, volume in enumerate(m.volumes):
        where = f"volumes[{v_index}]"
        if volume.number != v_index + 1:
            raise _Fail(f"{where}.number", f"is {volume.number}, expected {v_index + 1} (volumes in order)")
        if volume.folder != layout.volume_folder(m.set_id, volume.number):
            raise _Fail(f"{where}.folder", f"{volume.folder!r} is not {layout.volume_folder(m.set_id, volume.number)!r}")
        seen: set[str] = set()
        total = 0
        allowed = layout.is_parity_volume_path if volume.role == "parity" else layout.is_data_path
        for f_index, entry in enumerate(volume.files):
            field = f"{where}.files[{f_index}].path"
            if not allowed(entry.path):
                raise _Fail(field, f"{entry.path!r} is not a file name this format defines")
            # Case-insensitive file systems (ISO 9660 without extensions, Windows) would merge these.
            if entry.path.lower() in seen:
                raise _Fail(field, f"{entry.path!r} is listed twice")
            seen.add(entry.path.lower())
            total += entry.size
        required_files = (layout.README_NAME,) if volume.role == "parity" else (
            layout.README_NAME, layout.RESTORE_NAME, layout.DOCKER_MANIFEST_PATH)
        for required in required_files:
            if required.lower() not in seen:
                raise _Fail(f"{where}.files", f"does not list {required}")
        if total > m.media.capacity:
            raise _Fail(f"{where}.files", f"add up to {total} bytes, more than the media capacity {m.media.capacity}")


def _check_format2(m: SetManifest) -> None:
    """Block lists and parity volumes (format 2): present exactly when the version says so, and consistent."""
    if m.format_version == 1:
        if m.block_size is not None or m.parity is not None:
            raise _Fail("format_version", "1 has no block_size or parity; those need version 2")
        if any(f.blocks is not None for v in m.volumes for f in v.files):
            raise _Fail("format_version", "1 has no block hashes; they need version 2")
        if any(v.role == "parity" for v in m.volumes):
            raise _Fail("format_version", "1 has no parity volumes; they need version 2")
        return
    if m.block_size is None:
        raise _Fail("block_size", "is required in format version 2")
    for v_index, volume in enumerate(m.volumes):
        for f_index, entry in enumerate(volume.files):
            want = -(-entry.size // m.block_size)
            if entry.blocks is None or len(entry.blocks) != want:
                raise _Fail(f"volumes[{v_index}].files[{f_index}].blocks", f"must list {want} block hashes")
    p = m.parity
    roles = [v.role for v in m.volumes]
    if p is None:
        if "parity" in roles:
            raise _Fail("parity", "is missing but parity volumes are listed")
        return
    n = p.data_volumes
    if n + p.parity_volumes != m.volume_count or n + p.parity_volumes > 256:
        raise _Fail("parity", f"{n} + {p.parity_volumes} volumes is not volume_count {m.volume_count} (or above 256)")
    if roles != ["data"] * n + ["parity"] * p.parity_volumes:
        raise _Fail("volumes", f"must be {n} data volumes followed by {p.parity_volumes} parity volumes")
    if len(p.coefficients) != p.parity_volumes or any(len(row) != n for row in p.coefficients):
        raise _Fail("parity.coefficients", f"must be {p.parity_volumes} rows of {n} numbers")
    longest = max(sum(f.size for f in v.files) for v in m.volumes[:n])
    if p.length != longest:
        raise _Fail("parity.length", f"is {p.length}, the longest data volume payload is {longest}")
    for v_index, volume in enumerate(m.volumes[n:], start=n):
        parts = [f for f in volume.files if layout.PARITY_PART_RE.match(f.path)]
        if [f.path for f in parts] != [layout.parity_part_path(i + 1) for i in range(len(parts))]:
            raise _Fail(f"volumes[{v_index}].files", "parity parts must be numbered 1, 2, ... in order")
        if sum(f.size for f in parts) != p.length or any(f.size > layout.MAX_PART_SIZE for f in parts):
            raise _Fail(f"volumes[{v_index}].files", f"parity parts must add up to {p.length}, each <= MAX_PART_SIZE")


def _in_order(where: str, number: int, index: int) -> None:
    if number != index + 1:
        raise _Fail(f"{where}.number", f"is {number}, expected {index + 1} (listed in order)")


def _once(seen: set[str], value: str, field: str) -> None:
    if value in seen:
        raise _Fail(field, f"{value} is listed twice")
    seen.add(value)


def _volume_files(m: SetManifest) -> dict[tuple[int, str], FileEntry]:
    return {(v.number, f.path): f for v in m.volumes for f in v.files}


def _check_layers(m: SetManifest) -> None:
    files = _volume_files(m)
    claimed: set[tuple[int, str]] = set()
    diff_ids: set[str] = set()
    for l_index, layer in enumerate(m.layers):
        where = f"layers[{l_index}]"
        _in_order(where, layer.number, l_index)
        _once(diff_ids, layer.diff_id, f"{where}.diff_id")
        if len(layer.parts) > layout.MAX_PARTS_PER_LAYER:
            raise _Fail(f"{where}.parts", f"has {len(layer.parts)} parts, at most {layout.MAX_PARTS_PER_LAYER}")
        offset = 0
        previous_volume = 1
        for p_index, part in enumerate(layer.parts):
            field = f"{where}.parts[{p_index}]"
            if part.path != layout.part_path(layer.number, p_index + 1):
                raise _Fail(f"{field}.path", f"{part.path!r} is not {layout.part_path(layer.number, p_index + 1)!r}")
            if part.offset != offset:
                raise _Fail(f"{field}.offset", f"is {part.offset}, the previous parts end at {offset}")
            if not 0 < part.size <= layout.MAX_PART_SIZE:
                raise _Fail(f"{field}.size", f"{part.size} is not within 1..{layout.MAX_PART_SIZE}")
            if part.volume > m.volume_count or part.volume < previous_volume:
                raise _Fail(f"{field}.volume", f"{part.volume} is not a volume after {previous_volume} of {m.volume_count}")
            entry = files.get((part.volume, part.path))
            if entry is None:
                raise _Fail(f"{field}.path", f"{part.path} is not listed in volume {part.volume}'s files")
            if (entry.size, entry.sha256) != (part.size, part.sha256):
                raise _Fail(f"{field}.size", f"{part.path} has another size or sha256 in volume {part.volume}'s files")
            claimed.add((part.volume, part.path))
            offset += part.size
            previous_volume = part.volume
        if offset != layer.compressed_size:
            raise _Fail(f"{where}.compressed_size", f"is {layer.compressed_size} but the parts add up to {offset}")
    for (volume, path) in files:
        if layout.PART_RE.match(path) and (volume, path) not in claimed:
            raise _Fail(f"volumes[{volume - 1}].files", f"{path} belongs to no layer")


def _check_images(m: SetManifest) -> None:
    diff_ids = {layer.diff_id for layer in m.layers}
    used: set[str] = set()
    ids: set[str] = set()
    tags: set[str] = set()
    files = _volume_files(m)
    for i_index, image in enumerate(m.images):
        where = f"images[{i_index}]"
        _in_order(where, image.number, i_index)
        _once(ids, image.id, f"{where}.id")
        for tag in image.tags:
            if tag in tags or ".." in tag:
                raise _Fail(f"{where}.tags", f"{tag!r} is listed twice or is not a plain reference")
            tags.add(tag)
        if image.config.path != layout.config_path(image.number):
            raise _Fail(f"{where}.config.path", f"{image.config.path!r} is not {layout.config_path(image.number)!r}")
        if "sha256:" + image.config.sha256 != image.id:
            raise _Fail(f"{where}.config.sha256", "the image id is the sha256 of its config, they differ")
        for volume in m.volumes:
            if volume.role == "parity":
                continue
            entry = files.get((volume.number, image.config.path))
            if entry is None or (entry.size, entry.sha256) != (image.config.size, image.config.sha256):
                raise _Fail(f"{where}.config", f"volume {volume.number} does not list {image.config.path} as it is here")
        for d_index, diff_id in enumerate(image.layers):
            if diff_id not in diff_ids:
                raise _Fail(f"{where}.layers[{d_index}]", f"{diff_id} is not in the set's layers")
            used.add(diff_id)
    for l_index, layer in enumerate(m.layers):
        if layer.diff_id not in used:
            raise _Fail(f"layers[{l_index}]", f"{layer.diff_id} is used by no image")
    config_paths = {layout.config_path(image.number) for image in m.images}
    for (volume, path) in files:
        if layout.CONFIG_RE.match(path) and path not in config_paths:
            raise _Fail(f"volumes[{volume - 1}].files", f"{path} belongs to no image")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Fail(key, "key appears twice in one object")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise _Fail("<json>", f"{name} is not a number JSON allows")


def parse_manifest(data: bytes, source: str) -> SetManifest:
    """Parse and check a set manifest; ``source`` (a path) is named in every error.

    Raises ManifestError (an ArchiveError) naming the field for anything hostile or inconsistent.
    """
    if len(data) > layout.MAX_MANIFEST_BYTES:
        raise ManifestError(source, "<file>", f"is {len(data)} bytes, more than {layout.MAX_MANIFEST_BYTES}")
    try:
        text = data.decode("utf-8")
        raw = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise ManifestError(source, "<file>", f"is not UTF-8: {exc}") from exc
    except _Fail as exc:
        raise ManifestError(source, exc.field, exc.message) from exc
    except ValueError as exc:
        raise ManifestError(source, "<file>", f"is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ManifestError(source, "<file>", "is not a JSON object")
    if raw.get("format") != layout.FORMAT_NAME:
        raise ManifestError(source, "format", f"is {raw.get('format')!r}, not {layout.FORMAT_NAME!r}")
    version = raw.get("format_version")
    if type(version) is not int or version not in layout.READABLE_VERSIONS:
        raise ManifestError(
            source, "format_version",
            f"{version!r} is not supported; this imgbuild reads versions {layout.READABLE_VERSIONS}",
            hint="a newer imgbuild wrote this set; use that version (FORMAT.md describes every version)",
        )
    try:
        return SetManifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        ctx_error = (first.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _Fail):
            raise ManifestError(source, ctx_error.field, ctx_error.message) from exc
        field = ".".join(_loc_part(p) for p in first["loc"]) or "<root>"
        field = re.sub(r"\.\[", "[", field)
        raise ManifestError(source, field, first["msg"]) from exc


def _loc_part(part: int | str) -> str:
    return f"[{part}]" if isinstance(part, int) else str(part)


def revalidate(manifest: SetManifest) -> SetManifest:
    """Run every check again on a manifest built with model_copy (which skips validation)."""
    return SetManifest.model_validate(manifest.model_dump(mode="json"))


def dump_manifest(manifest: SetManifest) -> bytes:
    """Canonical bytes of a manifest: the same model always gives the same bytes."""
    data = manifest.model_dump(mode="json")
    if manifest.format_version == 1:  # version 1 has no such keys, not even as null
        data.pop("block_size")
        data.pop("parity")
        for volume in data["volumes"]:
            for entry in volume["files"]:
                entry.pop("blocks")
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
