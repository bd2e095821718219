"""A small but real set on disc (random layer bytes, consistent manifest) for parity and repair tests.

It is not loadable by an engine (the layers are random bytes); tests that load images use the real archive.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from imgbuild.setformat import layout
from imgbuild.setformat.blockhash import BLOCK_SIZE
from imgbuild.setformat.manifest import SetManifest, dump_manifest, parse_manifest

SET_ID = "0123456789abcdef"


def _write(folder: Path, rel: str, data: bytes) -> dict[str, object]:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _with_blocks(entry: dict[str, object], data: bytes) -> dict[str, object]:
    blocks = [hashlib.sha256(data[i:i + BLOCK_SIZE]).hexdigest() for i in range(0, len(data), BLOCK_SIZE)]
    return dict(entry, blocks=blocks)


def make_set(out: Path, volume_sizes: list[int], seed: int = 1, set_id: str = SET_ID,
             format_doc: bytes | None = None) -> SetManifest:
    """Data volumes whose one layer has a part of each given size on each volume (volume_sizes[i] bytes).

    Format 1; with ``format_doc``, format 3 with block hashes and that text as FORMAT.md on every volume."""
    rng = __import__("random").Random(seed)
    diff_id = "sha256:" + hashlib.sha256(b"layer").hexdigest()
    # The config and images/manifest.json say what the manifest says (verify and load cross-check them).
    config = json.dumps({"architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    config_sha = hashlib.sha256(config).hexdigest()
    docker = json.dumps([{"Config": layout.config_name(1), "RepoTags": ["localhost/synthetic:1"],
                          "Layers": [layout.layer_name(1)]}]).encode()
    volumes, parts, stream = [], [], hashlib.sha256()
    offset = 0
    for index, size in enumerate(volume_sizes):
        number = index + 1
        folder = out / layout.volume_folder(set_id, number)
        data = rng.randbytes(size) if size < (1 << 20) else os.urandom(size)
        stream.update(data)
        part = _write(folder, layout.part_path(1, number), data)
        parts.append(dict(part, volume=number, offset=offset))
        offset += size
        contents = [(layout.DOCKER_MANIFEST_PATH, docker), (layout.config_path(1), config),
                    (layout.RESTORE_NAME, b"#!/bin/sh\necho restore\n")]
        if format_doc is not None:
            contents.append((layout.FORMAT_DOC_NAME, format_doc))
        contents.append((layout.README_NAME, f"volume {number}\n".encode()))
        files = [part, *(_write(folder, rel, data) for rel, data in contents)]
        if format_doc is not None:
            files = [_with_blocks(part, data), *(_with_blocks(e, d) for e, (_, d) in zip(files[1:], contents))]
        volumes.append({"number": number, "folder": folder.name, "role": "data", "files": files})
    raw = {
        "format": "imgbuild-set", "format_version": 1, "set_id": set_id, "name": "synthetic",
        "created": "2026-11-22T04:30:00Z", "tool": {"name": "imgbuild", "version": "0.1.0"},
        "engine": {"kind": "podman", "version": "4.3.1"},
        "media": {"profile": "custom", "capacity": max(volume_sizes) + (1 << 20)},
        "compression": {"algorithm": "zstd", "level": 3, "long": False, "window_log": None},
        "volume_count": len(volumes), "volumes": volumes,
        "images": [{"number": 1, "id": "sha256:" + config_sha, "tags": ["localhost/synthetic:1"], "role": "app",
                    "config": {"path": layout.config_path(1), "size": len(config), "sha256": config_sha},
                    "layers": [diff_id]}],
        "layers": [{"number": 1, "diff_id": diff_id, "size": offset, "compressed_size": offset,
                    "compressed_sha256": stream.hexdigest(), "parts": parts}],
        "recipe": None,
    }
    if format_doc is not None:
        raw.update(format_version=3, block_size=BLOCK_SIZE)
    return parse_manifest(json.dumps(raw).encode(), "synthetic")


def write_metadata(out: Path, manifest: SetManifest) -> None:
    """The manifest and a SHA256SUMS on every volume, as archive writes them last."""
    data = dump_manifest(manifest)
    digest = hashlib.sha256(data).hexdigest()
    for volume in manifest.volumes:
        folder = out / volume.folder
        (folder / layout.MANIFEST_NAME).write_bytes(data)
        lines = [f"{f.sha256}  {f.path}\n" for f in volume.files] + [f"{digest}  {layout.MANIFEST_NAME}\n"]
        (folder / layout.SUMS_NAME).write_text("".join(lines))


def import_random_image(engine: object, tag: str, size: int) -> str:
    """Import a one-layer image holding ``size`` random bytes (zstd cannot shrink it); returns its id."""
    import io
    import tarfile

    from tests.support.import_tar import import_tar

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("data/blob.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    import_tar(engine, buffer.getvalue(), tag)  # type: ignore[arg-type]
    return str(engine.api.inspect_image(tag)["Id"])  # type: ignore[attr-defined]
