"""A starting image without a registry: a root filesystem made by mmdebstrap, cached, imported via the API.

The rootfs tar is cached under a key of everything that shapes it (suite, variant, packages, components,
mirror), so a second build, or the same recipe on a second engine, skips mmdebstrap. The imported image
carries the key as a label, so a second import into the same engine is skipped as well.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import docker.errors

from imgbuild.checkpoints.download import hash_file
from imgbuild.engine.connect import Engine
from imgbuild.engine.docker_archive import ArchiveImage, ArchiveLayer, docker_archive, post_archive
from imgbuild.engine.images import find_image, image_labels, split_tag
from imgbuild.foundation.cachedir import default_cache_dir
from imgbuild.foundation.errors import BuildFailed, EngineError, LoadError, UsageError
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent, no_progress
from imgbuild.recipe.model import Bootstrap

ROOTFS_KEY_LABEL = "org.imgbuild.rootfs-key"
ROOTFS_CMD = ["/bin/sh"]
LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class BootstrapOptions:
    mirror: str
    tag: str
    cache_dir: Path = Path()  # empty means default_cache_dir()
    rebuild: bool = False


@dataclass(frozen=True)
class BootstrapResult:
    tag: str
    image_id: str
    rootfs: Path
    key: str
    rootfs_cached: bool
    image_cached: bool

    def to_json(self) -> dict[str, object]:
        return {"tag": self.tag, "id": self.image_id, "rootfs": str(self.rootfs), "key": self.key,
                "rootfs_cached": self.rootfs_cached, "image_cached": self.image_cached}


def rootfs_key(spec: Bootstrap, mirror: str) -> str:
    """Hash of every input of mmdebstrap's output (package order does not matter)."""
    inputs = {"suite": spec.suite, "variant": spec.variant, "include": sorted(set(spec.include)),
              "components": spec.components, "mirror": mirror.rstrip("/")}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def mmdebstrap_command(spec: Bootstrap, mirror: str, out: Path) -> list[str]:
    cmd = ["mmdebstrap", f"--variant={spec.variant}", "--format=tar", f"--components={','.join(spec.components)}"]
    if spec.include:
        cmd.append(f"--include={','.join(spec.include)}")
    return cmd + [spec.suite, str(out), mirror]


def make_rootfs(spec: Bootstrap, mirror: str, cache_dir: Path, *, rebuild: bool = False,
                progress: ProgressCallback = no_progress) -> tuple[Path, bool]:
    """Return (rootfs tar, was cached). A lock file keeps concurrent builds from running mmdebstrap twice."""
    if shutil.which("mmdebstrap") is None:
        raise UsageError("mmdebstrap is not installed, but the recipe's base uses `bootstrap`",
                         hint="apt-get install -y mmdebstrap (scripts/setup.sh installs it)")
    key = rootfs_key(spec, mirror)
    folder = cache_dir / "rootfs"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{key}.tar"
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.exists() and not rebuild:
            return final, True
        partial = folder / f"{key}.tar.partial"
        cmd = mmdebstrap_command(spec, mirror, partial)
        task = f"bootstrap {spec.suite}"
        progress(ProgressEvent(task=task, message="$ " + " ".join(cmd)))
        tail = _run_logged(cmd, task, progress)
        if tail is not None:
            partial.unlink(missing_ok=True)
            raise BuildFailed(f"mmdebstrap failed for {spec.suite} from {mirror}", step="bootstrap",
                              log_tail=tail)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, final)
        progress(ProgressEvent(task=task, finished=True))
    return final, False


def _run_logged(cmd: list[str], task: str, progress: ProgressCallback) -> list[str] | None:
    """Run a command streaming its output as messages; return None on success, else the log tail."""
    tail: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace")
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail = (tail + [line])[-LOG_TAIL_LINES:]
        progress(ProgressEvent(task=task, message=line))
    return None if proc.wait() == 0 else tail


def import_rootfs(engine: Engine, rootfs: Path, tag: str, labels: dict[str, str],
                  progress: ProgressCallback = no_progress) -> str:
    """Import a rootfs tar as an image, tag it, return its id. The tar is streamed, not read into memory."""
    task = f"import {tag}"
    progress(ProgressEvent(task=task, message=f"importing {rootfs.name} into {engine.kind} as {tag}"))
    if engine.kind == "podman":
        image_id = _load_rootfs(engine, rootfs, labels)
    else:
        image_id = _import_rootfs(engine, rootfs, labels)
    # Podman ignores the repository/tag of an import, so tag explicitly on both engines.
    repo, version = split_tag(tag)
    engine.api.tag(image_id, repo, version)
    progress(ProgressEvent(task=task, finished=True))
    return image_id


def _import_rootfs(engine: Engine, rootfs: Path, labels: dict[str, str]) -> str:
    """Docker Engine: its import endpoint (`docker import`), with the labels and command as changes."""
    changes = [f"LABEL {k}={json.dumps(v)}" for k, v in labels.items()] + [f"CMD {json.dumps(ROOTFS_CMD)}"]
    try:
        with open(rootfs, "rb") as data:
            answer = engine.api.import_image_from_data(data, changes=changes)
    except docker.errors.APIError as exc:
        raise EngineError(f"{engine.host}: import of {rootfs} failed: {exc.explanation or exc}") from exc
    image_id = None
    for line in str(answer).splitlines():
        if not line.strip():
            continue
        chunk = json.loads(line)
        if chunk.get("error"):
            raise EngineError(f"{engine.host}: import of {rootfs} failed: {chunk['error']}")
        for value in (chunk.get("id"), chunk.get("status")):
            if isinstance(value, str) and value.startswith("sha256:"):
                image_id = value
    if image_id is None:
        raise EngineError(f"{engine.host}: import of {rootfs} gave no image id: {answer!r:.300}")
    return image_id


def _load_rootfs(engine: Engine, rootfs: Path, labels: dict[str, str]) -> str:
    """Podman: the rootfs as the one layer of a docker-archive, through the load endpoint. (Podman 4.3's
    import endpoint copies every upload into the service's temporary folder and never removes the copy.)

    The image config is written here as an import makes it: the labels and the command, no environment, and
    the time of the import as its creation time, so each import is an image of its own (two bootstraps of
    one rootfs under different tags do not become one image carrying both tags)."""
    diff_id = "sha256:" + hash_file(rootfs, "sha256")
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    config = json.dumps({
        "architecture": engine.api.version().get("Arch") or "amd64", "os": "linux", "created": created,
        "config": {"Cmd": ROOTFS_CMD, "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": f"imgbuild bootstrap: {rootfs.name}"}],
    }, sort_keys=True, separators=(",", ":")).encode()

    def chunks() -> Iterator[bytes]:
        with open(rootfs, "rb") as f:
            yield from iter(lambda: f.read(1 << 20), b"")

    layer = ArchiveLayer(diff_id=diff_id, size=rootfs.stat().st_size, open=chunks)
    try:
        post_archive(engine, docker_archive([ArchiveImage(config, (diff_id,))], {diff_id: layer}))
    except LoadError as exc:
        raise EngineError(f"{engine.host}: import of {rootfs} failed: {exc}") from exc
    return "sha256:" + hashlib.sha256(config).hexdigest()


def bootstrap_image(engine: Engine, spec: Bootstrap, options: BootstrapOptions,
                    progress: ProgressCallback = no_progress) -> BootstrapResult:
    """Make (or reuse) the rootfs and the image imported from it."""
    key = rootfs_key(spec, options.mirror)
    cache_dir = options.cache_dir if str(options.cache_dir) not in ("", ".") else default_cache_dir()
    existing = find_image(engine, options.tag)
    if existing and image_labels(existing).get(ROOTFS_KEY_LABEL) == key and not options.rebuild:
        return BootstrapResult(options.tag, existing["Id"], cache_dir / "rootfs" / f"{key}.tar", key,
                               rootfs_cached=True, image_cached=True)
    started = time.monotonic()
    rootfs, cached = make_rootfs(spec, options.mirror, cache_dir, rebuild=options.rebuild, progress=progress)
    if not cached:
        progress(ProgressEvent(task="bootstrap", message=f"rootfs made in {time.monotonic() - started:.0f} s"))
    labels = {ROOTFS_KEY_LABEL: key, "org.imgbuild.role": "rootfs"}
    image_id = import_rootfs(engine, rootfs, options.tag, labels, progress)
    return BootstrapResult(options.tag, image_id, rootfs, key, rootfs_cached=cached, image_cached=False)
