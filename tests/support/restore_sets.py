"""Real images and real archive sets for the verify / load / load-and-run tests.

Images are made through the engine's API (import + a COPY-only build, which needs no container runtime);
sets are written by imgbuild's own archive(). Nothing here writes a set by hand.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker.errors

from imgbuild.archive.archive import ArchiveOptions, ArchiveResult, archive
from imgbuild.engine.connect import Engine, connect
from imgbuild.engine.image_ids import image_store
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import Image, SetManifest, dump_manifest, parse_manifest
from tests.support.import_tar import import_tar

HOST_VARS = {"podman": "IMGBUILD_TEST_PODMAN_HOST", "docker": "IMGBUILD_TEST_DOCKER_HOST"}
SERVE = {"port": 8080, "command": ["python3", "-m", "http.server", "8080", "-d", "/srv"],
         "health": {"method": "GET", "path": "/health", "expect_status": 200, "timeout": 60, "interval": 0.3}}


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build(engine: Engine, tag: str, containerfile: str, files: dict[str, bytes]) -> str:
    """Build ``containerfile`` with ``files`` as its context; returns the image id."""
    context = io.BytesIO(tar_bytes({"Containerfile": containerfile.encode(), **files}))
    for line in engine.api.build(fileobj=context, custom_context=True, dockerfile="Containerfile", tag=tag,
                                 rm=True, decode=True):
        if "error" in line:
            raise RuntimeError(f"build of {tag} failed: {line['error']}")
    return str(engine.api.inspect_image(tag)["Id"])


def random_images(engine: Engine, prefix: str) -> tuple[str, str]:
    """(base, app): a base imported from a tar of random bytes, an app adding more random bytes on top.

    Random bytes do not compress, so a few MB give several small volumes.
    """
    base = f"{prefix}-base:1"
    app = f"{prefix}-app:1"
    import_tar(engine, tar_bytes({"data/base.bin": os.urandom(3_000_000)}), base)
    build(engine, app, f"FROM {base}\nCOPY app.bin /data/app.bin\nCMD [\"/bin/true\"]\n",
          {"app.bin": os.urandom(1_500_000)})
    return base, app


def web_image(engine: Engine, base: str, tag: str, health: bytes = b"ok\n") -> str:
    """An HTTP server image on ``base`` (Debian + python3): /health answers 200; serve section as a label."""
    label = json.dumps(SERVE).replace("'", "")
    # STOPSIGNAL: python as PID 1 ignores SIGTERM (no default handler) but raises KeyboardInterrupt on SIGINT,
    # so a stop takes a moment instead of the engine's 10 s grace period.
    containerfile = (f"FROM {base}\nCOPY health /srv/health\nLABEL org.imgbuild.serve='{label}'\n"
                     f"STOPSIGNAL SIGINT\nCMD {json.dumps(SERVE['command'])}\n")
    return build(engine, tag, containerfile, {"health": health})


def make_set(engine: Engine, refs: list[str], out: Path, media_size: int) -> ArchiveResult:
    catalog = out.parent / f"{out.name}-catalog"
    return archive(engine, refs, ArchiveOptions(out=out, media=None, media_size=media_size, catalog=catalog))


RANDOM_SET_MEDIA_SIZE = 2_700_000  # 1 MiB of it is kept for metadata: ~1.6 MB of random layer bytes per volume


def random_set(engine: Engine, name: str, out: Path) -> list[Path]:
    """A set of at least 3 volumes holding random_images(), which are then removed from the engine."""
    refs = list(random_images(engine, unique_prefix(name)))
    try:
        result = make_set(engine, refs, out, RANDOM_SET_MEDIA_SIZE)
    finally:
        remove_images(engine, list(reversed(refs)))
    assert len(result.volumes) >= 3
    return [Path(v) for v in result.volumes]


def remove_images(engine: Engine, refs: list[str]) -> None:
    """Remove tags and ids this test made (never prune)."""
    for ref in refs:
        try:
            engine.api.remove_image(ref, force=True)
        except docker.errors.APIError:
            pass


def set_image_id(engine: Engine, image: Image) -> str | None:
    """The engine's id of a set's image, or None when absent. Docker's containerd image store names images by
    manifest digest, so there the image is the one whose layers are the set image's (random, so unique)."""
    try:
        if engine.api.inspect_image(image.id)["Id"] == image.id:
            return image.id
    except docker.errors.APIError:
        pass
    if image_store(engine) != "containerd":
        return None
    for entry in engine.api.images(all=True):
        try:
            info = engine.api.inspect_image(entry["Id"])
        except docker.errors.APIError:
            continue
        if (info.get("RootFS") or {}).get("Layers") == list(image.layers):
            return str(info["Id"])
    return None


def image_exists(engine: Engine, ref: str) -> bool:
    try:
        engine.api.inspect_image(ref)
    except docker.errors.APIError:
        return False
    return True


@contextmanager
def other_engine(kind: str) -> Iterator[Engine | None]:
    """The engine of the other kind, or None when it is not configured."""
    other = "docker" if kind == "podman" else "podman"
    host = os.environ.get(HOST_VARS[other])
    if not host:
        yield None
        return
    with connect(other, host) as found:
        yield found


def copy_set(source: Path, target: Path) -> list[Path]:
    """A private copy of a set folder; returns its volume folders in order."""
    shutil.copytree(source, target)
    return sorted(p for p in target.iterdir() if p.is_dir())


def unique_prefix(name: str) -> str:
    return f"localhost/imgbuild-test-{name}-{secrets.token_hex(4)}"


def manifest_of(volume: Path) -> SetManifest:
    return parse_manifest((volume / layout.MANIFEST_NAME).read_bytes(), str(volume))


def parts_of(volumes: list[Path]) -> list[Path]:
    return [v / f.path for v in volumes for f in manifest_of(v).volume(volume_number(v)).files
            if layout.PART_RE.match(f.path)]


def volume_number(volume: Path) -> int:
    parsed = layout.parse_volume_folder(volume.name)
    assert parsed is not None
    return parsed[1]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def bad_paths(report: Any) -> set[str]:
    return {p.path for p in report.problems}


def rewrite_manifest(volumes: list[Path], change: Callable[[dict[str, Any]], None], *, check: bool = True) -> bytes:
    """Change the manifest on every volume and keep SHA256SUMS consistent, as a careful forger would."""
    raw = json.loads((volumes[0] / layout.MANIFEST_NAME).read_text())
    change(raw)
    data = (json.dumps(raw, indent=2, sort_keys=True) + "\n").encode()
    if check:
        data = dump_manifest(parse_manifest(data, "test"))
    digest = hashlib.sha256(data).hexdigest()
    for volume in volumes:
        (volume / layout.MANIFEST_NAME).write_bytes(data)
        sums = volume / layout.SUMS_NAME
        lines = [line if not line.endswith("  " + layout.MANIFEST_NAME) else f"{digest}  {layout.MANIFEST_NAME}"
                 for line in sums.read_text().splitlines()]
        sums.write_text("\n".join(lines) + "\n")
    return data
