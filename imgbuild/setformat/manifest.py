"""The set manifest (format imgbuild-set, versions 1 to 3) and its strict parser.

The manifest is the one description of a set: images, their configs and layers, every file of every volume
with its size and sha256. A set on disc may have been tampered with, so ``parse_manifest`` trusts nothing:
every name must be one the layout defines (no ``..``, no absolute path, no separator where none belongs, no
name a symlink or a case-insensitive file system could make collide), every size must add up, every cross
reference must resolve (imgbuild.setformat.manifest_checks), and an unknown format version is refused. Errors name the
offending field.
``dump_manifest`` writes the canonical bytes (sorted keys, fixed indentation) that go on every volume.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from imgbuild.foundation.errors import ManifestError
from imgbuild.setformat import layout
from imgbuild.setformat.manifest_checks import Fail, check_set

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
    # Long-distance matching; window_log is what a decompressor must allow. The writer uses at most 27 (plain
    # `zstd -d` needs no --long); a larger value would make readers reserve up to 2 GiB, so it is refused.
    long: bool
    window_log: Annotated[int, Field(ge=10, le=27)] | None = None


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
    FORMAT.md section 9 and imgbuild/parity/erasure.py.
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


class SbomFile(_Model):
    """Format 3: the image's SBOM (CycloneDX JSON), the same file on every data volume."""

    path: Annotated[str, Field(max_length=64)]
    size: Annotated[int, Field(gt=0, le=layout.MAX_SBOM_BYTES)]
    sha256: Hex64


class Image(_Model):
    number: Annotated[int, Field(ge=1, le=layout.MAX_IMAGES)]
    id: Digest
    tags: list[ImageTag]
    role: Literal["base", "app"] | None = None
    config: ConfigFile
    layers: list[Digest]
    sbom: SbomFile | None = None


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
    format_version: Literal[1, 2, 3] = layout.FORMAT_VERSION
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
        check_set(self)
        return self

    def volume(self, number: int) -> Volume:
        return self.volumes[number - 1]

    def layer(self, diff_id: str) -> Layer:
        return next(layer for layer in self.layers if layer.diff_id == diff_id)

    def app_image(self) -> Image | None:
        return next((image for image in self.images if image.role == "app"), None)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise Fail(key, "key appears twice in one object")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise Fail("<json>", f"{name} is not a number JSON allows")


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
    except Fail as exc:
        raise ManifestError(source, exc.field, exc.message) from exc
    except ValueError as exc:
        raise ManifestError(source, "<file>", f"is not JSON: {exc}") from exc
    except RecursionError:
        raise ManifestError(source, "<file>", "nests JSON arrays or objects too deeply") from None
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
        if isinstance(ctx_error, Fail):
            raise ManifestError(source, ctx_error.field, ctx_error.message) from exc
        field = ".".join(_loc_part(p) for p in first["loc"]) or "<root>"
        field = re.sub(r"\.\[", "[", field)
        raise ManifestError(source, field, first["msg"]) from exc


def _loc_part(part: int | str) -> str:
    return f"[{part}]" if isinstance(part, int) else str(part)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the set manifest, generated from these models (``imgbuild schema --manifest``).

    It states every key, type, pattern and numeric limit; the cross-reference rules (FORMAT.md section 3)
    are beyond what a schema says and are checked by ``parse_manifest``.
    """
    schema = SetManifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = ("imgbuild-set manifest (imgbuild-set.json), format versions "
                             f"{', '.join(map(str, layout.READABLE_VERSIONS))}; FORMAT.md section 3")
    return schema


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
    if manifest.format_version < layout.FORMAT_VERSION_SBOM:  # nor do versions 1 and 2 know image SBOMs
        for image in data["images"]:
            image.pop("sbom")
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
