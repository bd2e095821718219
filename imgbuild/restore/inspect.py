"""`imgbuild inspect DIR|IMAGE`: what a set on disc, or an image in an engine, holds.

A set (format 3) carries each image's SBOM on every data volume, referenced by the manifest with its size
and sha256; the copy read here is checked against that before it is trusted. An image in an engine has the
SBOM recorded when it was built (imgbuild/build/sbom.py), or gets one made now.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgbuild.build.sbom import Contents, image_sbom, summarize
from imgbuild.discs.locate import locate_set
from imgbuild.discs.sources import VolumeSource
from imgbuild.engine.connect import Engine, connect
from imgbuild.engine.images import find_image, image_labels
from imgbuild.foundation.errors import ArchiveError, UsageError
from imgbuild.foundation.progress import ProgressCallback, no_progress
from imgbuild.setformat import layout


@dataclass(frozen=True)
class InspectResult:
    source: str  # the set folder(s) or the image reference
    set_id: str | None
    format_version: int | None
    images: tuple[Contents, ...]
    checkpoints_lock: dict[str, Any] | None = None
    note: str = ""  # e.g. a set written before SBOMs were part of the format

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "set_id": self.set_id, "format_version": self.format_version,
                "images": [c.to_json() for c in self.images], "checkpoints_lock": self.checkpoints_lock,
                "note": self.note or None}


def inspect_set(dirs: list[Path], catalog: Path | None = None, set_id: str | None = None) -> InspectResult:
    """The SBOMs of a set's images, from the first volume that holds each one intact."""
    located = locate_set(dirs, catalog, set_id)
    manifest = located.manifest
    lock = manifest.recipe.checkpoints_lock if manifest.recipe else None
    lock_json = json.loads(lock.text) if lock else None
    source = ", ".join(str(d) for d in dirs)
    if all(image.sbom is None for image in manifest.images):
        return InspectResult(source, manifest.set_id, manifest.format_version, (), lock_json,
                             note=f"this set is format {manifest.format_version}; image SBOMs came with format 3")
    contents = []
    for image in manifest.images:
        if image.sbom is None:
            continue
        data = _read_sbom(located.volumes, image.sbom.path, image.sbom.sha256)
        contents.append(summarize(data))
    return InspectResult(source, manifest.set_id, manifest.format_version, tuple(contents), lock_json)


def _read_sbom(volumes: dict[int, VolumeSource], path: str, sha256: str) -> bytes:
    bad = []
    for number in sorted(volumes):
        source = volumes[number]
        try:
            data = source.read_small(path, layout.MAX_SBOM_BYTES)
        except ArchiveError as exc:
            bad.append(str(exc))
            continue
        if hashlib.sha256(data).hexdigest() == sha256:
            return data
        bad.append(f"{source.shown(path)}: sha256 differs from the manifest's")
    raise ArchiveError(f"no intact copy of {path} among the volumes given: {'; '.join(bad) or 'none holds it'}")


def inspect_image(engine: Engine, reference: str) -> InspectResult:
    """The SBOM of an image in the engine: the one recorded at build time, else made now."""
    info = find_image(engine, reference)
    if info is None:
        raise UsageError(f"{reference}: neither a folder nor an image {engine.kind} knows")
    tags = list(info.get("RepoTags") or [])
    role = image_labels(info).get("org.imgbuild.role")
    contents = summarize(image_sbom(engine, info["Id"], tags, role))
    return InspectResult(reference, None, None, (contents,))


@dataclass(frozen=True)
class InspectOptions:
    catalog: Path | None = None  # a set: check against this catalog copy of the manifest
    engine: str = "auto"  # an image: which engine, as for every command (--engine, --host)
    host: str | None = None
    set_id: str | None = None  # a set: which one, when the folders hold volumes of several


def inspect_target(targets: list[str], options: InspectOptions = InspectOptions(),
                   progress: ProgressCallback = no_progress) -> InspectResult:
    """Folders (a set's volumes) or one image reference."""
    if all(Path(t).is_dir() for t in targets):
        return inspect_set([Path(t) for t in targets], options.catalog, options.set_id)
    if len(targets) != 1:
        raise UsageError(f"give volume folders or one image; not folders: {[t for t in targets if not Path(t).is_dir()]}")
    with connect(options.engine, options.host, progress=progress) as engine:
        return inspect_image(engine, targets[0])
