"""The set manifest's cross-reference checks: what field types alone cannot say.

Volumes numbered and named in order, every listed name one the layout defines and no two equal when case is
ignored, sizes that fit the media, format 2's block lists and parity volumes, every layer part and image
config listed in its volume's files exactly as described, nothing on a volume that belongs to no layer or
image. Each check raises ``Fail`` naming the field; ``parse_manifest`` turns it into a ManifestError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgbuild.setformat import layout

if TYPE_CHECKING:
    from imgbuild.setformat.manifest import FileEntry, SetManifest


def check_set(m: SetManifest) -> None:
    """Every cross-reference check, in the order the fields are read: volumes, format 2, layers, images,
    format 3 (SBOMs, FORMAT.md)."""
    _check_volumes(m)
    _check_format2(m)
    _check_layers(m)
    _check_images(m)
    _check_sboms(m)
    _check_format_doc(m)


class Fail(ValueError):
    """A consistency failure at a field path; turned into ManifestError by parse_manifest."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _check_volumes(m: SetManifest) -> None:
    if m.volume_count != len(m.volumes):
        raise Fail("volume_count", f"is {m.volume_count} but {len(m.volumes)} volumes are listed")
    for v_index, volume in enumerate(m.volumes):
        where = f"volumes[{v_index}]"
        if volume.number != v_index + 1:
            raise Fail(f"{where}.number", f"is {volume.number}, expected {v_index + 1} (volumes in order)")
        if volume.folder != layout.volume_folder(m.set_id, volume.number):
            raise Fail(f"{where}.folder", f"{volume.folder!r} is not {layout.volume_folder(m.set_id, volume.number)!r}")
        seen: set[str] = set()
        total = 0
        allowed = layout.is_parity_volume_path if volume.role == "parity" else layout.is_data_path
        for f_index, entry in enumerate(volume.files):
            field = f"{where}.files[{f_index}].path"
            if not allowed(entry.path):
                raise Fail(field, f"{entry.path!r} is not a file name this format defines")
            # Case-insensitive file systems (ISO 9660 without extensions, Windows) would merge these.
            if entry.path.lower() in seen:
                raise Fail(field, f"{entry.path!r} is listed twice")
            seen.add(entry.path.lower())
            total += entry.size
        required_files = (layout.README_NAME,) if volume.role == "parity" else (
            layout.README_NAME, layout.RESTORE_NAME, layout.DOCKER_MANIFEST_PATH)
        for required in required_files:
            if required.lower() not in seen:
                raise Fail(f"{where}.files", f"does not list {required}")
        if total > m.media.capacity:
            raise Fail(f"{where}.files", f"add up to {total} bytes, more than the media capacity {m.media.capacity}")


def _check_format2(m: SetManifest) -> None:
    """Block lists and parity volumes (format 2): present exactly when the version says so, and consistent."""
    if m.format_version == 1:
        if m.block_size is not None or m.parity is not None:
            raise Fail("format_version", "1 has no block_size or parity; those need version 2")
        if any(f.blocks is not None for v in m.volumes for f in v.files):
            raise Fail("format_version", "1 has no block hashes; they need version 2")
        if any(v.role == "parity" for v in m.volumes):
            raise Fail("format_version", "1 has no parity volumes; they need version 2")
        return
    if m.block_size is None:
        raise Fail("block_size", f"is required in format version {m.format_version}")
    for v_index, volume in enumerate(m.volumes):
        for f_index, entry in enumerate(volume.files):
            want = -(-entry.size // m.block_size)
            if entry.blocks is None or len(entry.blocks) != want:
                raise Fail(f"volumes[{v_index}].files[{f_index}].blocks", f"must list {want} block hashes")
    p = m.parity
    roles = [v.role for v in m.volumes]
    if p is None:
        if "parity" in roles:
            raise Fail("parity", "is missing but parity volumes are listed")
        return
    n = p.data_volumes
    if n + p.parity_volumes != m.volume_count or n + p.parity_volumes > 256:
        raise Fail("parity", f"{n} + {p.parity_volumes} volumes is not volume_count {m.volume_count} (or above 256)")
    if roles != ["data"] * n + ["parity"] * p.parity_volumes:
        raise Fail("volumes", f"must be {n} data volumes followed by {p.parity_volumes} parity volumes")
    if len(p.coefficients) != p.parity_volumes or any(len(row) != n for row in p.coefficients):
        raise Fail("parity.coefficients", f"must be {p.parity_volumes} rows of {n} numbers")
    longest = max(sum(f.size for f in v.files) for v in m.volumes[:n])
    if p.length != longest:
        raise Fail("parity.length", f"is {p.length}, the longest data volume payload is {longest}")
    for v_index, volume in enumerate(m.volumes[n:], start=n):
        parts = [f for f in volume.files if layout.PARITY_PART_RE.match(f.path)]
        if [f.path for f in parts] != [layout.parity_part_path(i + 1) for i in range(len(parts))]:
            raise Fail(f"volumes[{v_index}].files", "parity parts must be numbered 1, 2, ... in order")
        if sum(f.size for f in parts) != p.length or any(f.size > layout.MAX_PART_SIZE for f in parts):
            raise Fail(f"volumes[{v_index}].files", f"parity parts must add up to {p.length}, each <= MAX_PART_SIZE")


def _in_order(where: str, number: int, index: int) -> None:
    if number != index + 1:
        raise Fail(f"{where}.number", f"is {number}, expected {index + 1} (listed in order)")


def _once(seen: set[str], value: str, field: str) -> None:
    if value in seen:
        raise Fail(field, f"{value} is listed twice")
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
            raise Fail(f"{where}.parts", f"has {len(layer.parts)} parts, at most {layout.MAX_PARTS_PER_LAYER}")
        offset = 0
        previous_volume = 1
        for p_index, part in enumerate(layer.parts):
            field = f"{where}.parts[{p_index}]"
            if part.path != layout.part_path(layer.number, p_index + 1):
                raise Fail(f"{field}.path", f"{part.path!r} is not {layout.part_path(layer.number, p_index + 1)!r}")
            if part.offset != offset:
                raise Fail(f"{field}.offset", f"is {part.offset}, the previous parts end at {offset}")
            if not 0 < part.size <= layout.MAX_PART_SIZE:
                raise Fail(f"{field}.size", f"{part.size} is not within 1..{layout.MAX_PART_SIZE}")
            if part.volume > m.volume_count or part.volume < previous_volume:
                raise Fail(f"{field}.volume", f"{part.volume} is not a volume after {previous_volume} of {m.volume_count}")
            entry = files.get((part.volume, part.path))
            if entry is None:
                raise Fail(f"{field}.path", f"{part.path} is not listed in volume {part.volume}'s files")
            if (entry.size, entry.sha256) != (part.size, part.sha256):
                raise Fail(f"{field}.size", f"{part.path} has another size or sha256 in volume {part.volume}'s files")
            claimed.add((part.volume, part.path))
            offset += part.size
            previous_volume = part.volume
        if offset != layer.compressed_size:
            raise Fail(f"{where}.compressed_size", f"is {layer.compressed_size} but the parts add up to {offset}")
    for (volume, path) in files:
        if layout.PART_RE.match(path) and (volume, path) not in claimed:
            raise Fail(f"volumes[{volume - 1}].files", f"{path} belongs to no layer")


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
                raise Fail(f"{where}.tags", f"{tag!r} is listed twice or is not a plain reference")
            tags.add(tag)
        if image.config.path != layout.config_path(image.number):
            raise Fail(f"{where}.config.path", f"{image.config.path!r} is not {layout.config_path(image.number)!r}")
        if "sha256:" + image.config.sha256 != image.id:
            raise Fail(f"{where}.config.sha256", "the image id is the sha256 of its config, they differ")
        for volume in m.volumes:
            if volume.role == "parity":
                continue
            entry = files.get((volume.number, image.config.path))
            if entry is None or (entry.size, entry.sha256) != (image.config.size, image.config.sha256):
                raise Fail(f"{where}.config", f"volume {volume.number} does not list {image.config.path} as it is here")
        for d_index, diff_id in enumerate(image.layers):
            if diff_id not in diff_ids:
                raise Fail(f"{where}.layers[{d_index}]", f"{diff_id} is not in the set's layers")
            used.add(diff_id)
    for l_index, layer in enumerate(m.layers):
        if layer.diff_id not in used:
            raise Fail(f"layers[{l_index}]", f"{layer.diff_id} is used by no image")
    config_paths = {layout.config_path(image.number) for image in m.images}
    for (volume, path) in files:
        if layout.CONFIG_RE.match(path) and path not in config_paths:
            raise Fail(f"volumes[{volume - 1}].files", f"{path} belongs to no image")


def _check_sboms(m: SetManifest) -> None:
    """Format 3: an image's SBOM is sbom/imageNN.cdx.json, listed alike on every data volume; no stray ones."""
    files = _volume_files(m)
    if m.format_version < 3:
        if any(image.sbom is not None for image in m.images):
            raise Fail("format_version", f"{m.format_version} has no image SBOMs; they need version 3")
    for i_index, image in enumerate(m.images):
        if image.sbom is None:
            continue
        where = f"images[{i_index}].sbom"
        if image.sbom.path != layout.sbom_path(image.number):
            raise Fail(f"{where}.path", f"{image.sbom.path!r} is not {layout.sbom_path(image.number)!r}")
        for volume in m.volumes:
            if volume.role == "parity":
                continue
            entry = files.get((volume.number, image.sbom.path))
            if entry is None or (entry.size, entry.sha256) != (image.sbom.size, image.sbom.sha256):
                raise Fail(where, f"volume {volume.number} does not list {image.sbom.path} as it is here")
    sbom_paths = {image.sbom.path for image in m.images if image.sbom is not None}
    for (volume, path) in files:
        if layout.SBOM_RE.match(path) and path not in sbom_paths:
            raise Fail(f"volumes[{volume - 1}].files", f"{path} belongs to no image")


def _check_format_doc(m: SetManifest) -> None:
    """Format 3: FORMAT.md may be on any volume (sets written before it are read alike); where listed, it is the
    same file everywhere."""
    listed = [(v.number, f) for v in m.volumes for f in v.files if f.path == layout.FORMAT_DOC_NAME]
    if listed and m.format_version < layout.FORMAT_VERSION_SBOM:
        raise Fail(f"volumes[{listed[0][0] - 1}].files", f"{layout.FORMAT_DOC_NAME} needs format version 3")
    for number, entry in listed[1:]:
        if (entry.size, entry.sha256) != (listed[0][1].size, listed[0][1].sha256):
            raise Fail(f"volumes[{number - 1}].files",
                       f"{layout.FORMAT_DOC_NAME} differs from volume {listed[0][0]}'s (one text on every volume)")
