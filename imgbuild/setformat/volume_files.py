"""Files whose bytes follow from the manifest (or this imgbuild) alone: SHA256SUMS on every volume, and
FORMAT.md and images/manifest.json on every data volume."""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources

from imgbuild.setformat import layout
from imgbuild.setformat.manifest import FileEntry, Image, Layer


def format_doc() -> bytes:
    """FORMAT.md, the specification of this format, as this imgbuild ships it; every volume carries a copy."""
    return resources.files("imgbuild").joinpath(layout.FORMAT_DOC_NAME).read_bytes()


def docker_manifest(images: list[Image], layers: list[Layer]) -> bytes:
    """images/manifest.json: the docker-archive manifest naming configNN.json and layerLLLL.tar."""
    number = {layer.diff_id: layer.number for layer in layers}
    entries = [{
        "Config": layout.config_name(image.number),
        "RepoTags": image.tags or None,
        "Layers": [layout.layer_name(number[d]) for d in image.layers],
    } for image in images]
    return (json.dumps(entries, indent=2) + "\n").encode()


def sums_file(files: Iterable[FileEntry], manifest_sha256: str) -> bytes:
    """SHA256SUMS as FORMAT.md section 4 defines it: the listed files in order, then the manifest."""
    lines = [f"{entry.sha256}  {entry.path}\n" for entry in files]
    lines.append(f"{manifest_sha256}  {layout.MANIFEST_NAME}\n")
    return "".join(lines).encode()
