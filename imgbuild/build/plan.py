"""`imgbuild plan`: what a build of a recipe would use, worked out without network and without an engine.

A plan answers the questions a user on a slow line asks before starting a build that may run for hours:
which mirrors will be used and where each setting comes from (the recipe, or this host's own apt/pip
configuration), which build args each image gets, which local files go into the build contexts and how
big they are, which checkpoints will be fetched (sizes and commit from the lock file when there is one),
and which tags come out. It reads only the recipe, the files it names, the lock file and this host's
configuration files.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from imgbuild.build.build import rootfs_tag
from imgbuild.build.context import (
    APP_DIR,
    CA_DIR,
    WHEELS_DIR,
    EffectiveMirrors,
    app_build_args,
    base_build_args,
    containerfile_for,
    resolve_mirrors,
    with_registry,
)
from imgbuild.checkpoints.download import local_files
from imgbuild.checkpoints.hub import choose_endpoint
from imgbuild.checkpoints.lockfile import Lock, entry_key, lock_path_for, read_lock
from imgbuild.foundation.errors import DownloadError
from imgbuild.recipe.loader import LoadedRecipe, load_recipe
from imgbuild.recipe.model import HubCheckpoint

# Where a mirror setting came from, shown next to its value.
FROM_RECIPE = "recipe"
FROM_HOST = "this host"
FROM_ENV = "environment"
FROM_DEFAULT = "default"
UNSET = "unset"


@dataclass(frozen=True)
class PlanOptions:
    env: Mapping[str, str] | None = None  # for ${VAR} interpolation and HF_ENDPOINT; None: os.environ
    host_defaults: bool = True  # fill mirrors the recipe leaves unset from this host, as `build` does


@dataclass(frozen=True)
class MirrorSetting:
    name: str  # e.g. "pip.index_url"
    value: Any  # str, list[str] or None
    source: str  # FROM_RECIPE, FROM_HOST_APT, ...

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "source": self.source}


@dataclass(frozen=True)
class PlannedFile:
    """A local file or folder that goes into a build context."""

    role: str  # "containerfile", "ca-certificate", "find-links", "context", "local-checkpoint"
    key: str  # where the recipe names it, e.g. "app.context[0].src"
    path: str
    dest: str | None
    bytes: int
    files: int
    extract: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PlannedCheckpoint:
    source: str  # "hub" or "local"
    name: str  # repo@revision, or the local path
    dest: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    locked: bool
    commit: str | None = None
    files: tuple[tuple[str, int], ...] = ()  # (path, size) from the lock, or from the folder for local entries
    endpoint: str | None = None

    @property
    def bytes(self) -> int | None:
        return sum(size for _, size in self.files) if self.files else None

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "name": self.name, "dest": self.dest, "include": list(self.include),
                "exclude": list(self.exclude), "locked": self.locked, "commit": self.commit,
                "endpoint": self.endpoint, "bytes": self.bytes,
                "files": [{"path": p, "size": s} for p, s in self.files]}


@dataclass(frozen=True)
class PlannedImage:
    role: str  # "base" or "app"
    tag: str
    start: str  # "bootstrap bookworm (minbase, +python3) from URL", an image reference, or the base tag
    containerfile: str
    args: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Plan:
    recipe: str
    name: str
    mirrors: tuple[MirrorSetting, ...]
    images: tuple[PlannedImage, ...]
    files: tuple[PlannedFile, ...]
    checkpoints: tuple[PlannedCheckpoint, ...]
    lock_file: str
    lock_present: bool
    notes: tuple[str, ...] = ()

    @property
    def context_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def checkpoint_bytes(self) -> int | None:
        sizes = [c.bytes for c in self.checkpoints]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "name": self.name,
                "mirrors": [m.to_json() for m in self.mirrors],
                "images": [i.to_json() for i in self.images],
                "files": [f.to_json() for f in self.files],
                "checkpoints": [c.to_json() for c in self.checkpoints],
                "lock_file": self.lock_file, "lock_present": self.lock_present,
                "context_bytes": self.context_bytes, "checkpoint_bytes": self.checkpoint_bytes,
                "notes": list(self.notes)}


def mirror_settings(loaded: LoadedRecipe, eff: EffectiveMirrors, env: Mapping[str, str]) -> tuple[MirrorSetting, ...]:
    """The effective mirrors of a build, each with where it comes from (the recipe, or this host)."""
    m = loaded.recipe.mirrors

    def setting(name: str, given: Any, value: Any) -> MirrorSetting:
        empty = value in (None, "", [], ())
        source = FROM_RECIPE if given else (UNSET if empty else FROM_HOST)
        return MirrorSetting(name, list(value) if isinstance(value, tuple) else value, source)

    hf_source = FROM_RECIPE if m.huggingface else (FROM_ENV if env.get("HF_ENDPOINT") else FROM_DEFAULT)
    return (
        setting("apt", m.apt, eff.apt),
        setting("pip.index_url", m.pip.index_url, eff.pip_index_url),
        setting("pip.extra_index_urls", m.pip.extra_index_urls, eff.pip_extra_index_urls),
        setting("pip.trusted_hosts", m.pip.trusted_hosts, eff.pip_trusted_hosts),
        setting("pip.find_links", [f for f in m.pip.find_links if f],
                list(eff.find_links_urls) + [str(p) for p in eff.find_links_dirs]),
        MirrorSetting("huggingface", choose_endpoint(m.huggingface, env), hf_source),
        setting("registry", m.registry, eff.registry),
        setting("ca_certificates", [p for p in m.ca_certificates if p], [str(p) for p in eff.ca_files]),
    )


def _tree_size(path: Path) -> tuple[int, int]:
    """(bytes, files) of a file or a folder (symlinks not followed)."""
    if path.is_file():
        return path.stat().st_size, 1
    total = count = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            total += os.lstat(os.path.join(root, name)).st_size
            count += 1
    return total, count


def _archive_size(path: Path) -> tuple[int, int]:
    """(unpacked bytes, files) of a zip; the packed size for other archives (not opened)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            return sum(i.file_size for i in infos), len(infos)
    return _tree_size(path)


def _files(loaded: LoadedRecipe, eff: EffectiveMirrors) -> list[PlannedFile]:
    """Every local file a build puts into its contexts (checkpoints are listed separately)."""
    r = loaded.recipe
    out: list[PlannedFile] = []

    def add(role: str, key: str, path: Path, dest: str | None = None, extract: bool = False) -> None:
        size, count = _archive_size(path) if extract else _tree_size(path)
        out.append(PlannedFile(role, key, str(path), dest, size, count, extract))

    for role in ("base", "app") if r.app else ("base",):
        add("containerfile", f"{role}.containerfile", containerfile_for(loaded, role), "Containerfile")
    from_recipe = bool([p for p in r.mirrors.ca_certificates if p])
    for i, ca in enumerate(eff.ca_files):
        add("ca-certificate", f"mirrors.ca_certificates[{i}]" if from_recipe else FROM_HOST, ca, CA_DIR)
    for i, folder in enumerate(eff.find_links_dirs):
        add("find-links", f"mirrors.pip.find_links[{i}]", folder, WHEELS_DIR)
    for i, item in enumerate(r.app.context if r.app else []):
        add("context", f"app.context[{i}].src", loaded.resolve(item.src), f"{APP_DIR}/{item.dest}", item.extract)
    return out


def _checkpoints(loaded: LoadedRecipe, lock: Lock | None, endpoint: str) -> list[PlannedCheckpoint]:
    out: list[PlannedCheckpoint] = []
    for entry in loaded.recipe.app.checkpoints if loaded.recipe.app else []:
        # The lock stores dest normalized (no "./", no trailing "/"), as `download` writes it.
        dest = str(PurePosixPath(*PurePosixPath(entry.dest).parts)) if entry.dest else entry.dest
        found = lock.find(entry_key(entry), dest) if lock else None
        if isinstance(entry, HubCheckpoint):
            files = tuple((f.path, f.size) for f in found.files) if found else ()
            out.append(PlannedCheckpoint("hub", f"{entry.repo}@{entry.revision}", entry.dest, tuple(entry.include),
                                         tuple(entry.exclude), found is not None, found.commit if found else None,
                                         files, (found.endpoint if found else None) or endpoint))
            continue
        root = loaded.resolve(entry.path)
        try:  # the same selection `download` makes, so the sizes are the ones that will be staged
            local = tuple((rel, path.stat().st_size) for rel, path in local_files(root, entry))
        except DownloadError:
            local = ()
        out.append(PlannedCheckpoint("local", str(root), entry.dest, tuple(entry.include), tuple(entry.exclude),
                                     found is not None, None, local))
    return out


def plan_recipe(path: str | os.PathLike[str], options: PlanOptions = PlanOptions()) -> Plan:
    """Load the recipe (strictly, as `check` does) and work out what a build would use."""
    env = os.environ if options.env is None else options.env
    loaded = load_recipe(path, env)
    r = loaded.recipe
    eff = resolve_mirrors(loaded, options.host_defaults)
    notes: list[str] = []
    if r.base.bootstrap is not None:
        b = r.base.bootstrap
        mirror = b.mirror or eff.apt
        base_from = rootfs_tag(r.base.tag)
        start = f"bootstrap {b.suite} ({b.variant}, +{','.join(b.include) or 'nothing'}) from {mirror or '?'}"
        if not mirror:
            notes.append("no apt mirror for bootstrap: set mirrors.apt or base.bootstrap.mirror")
    else:
        base_from = start = with_registry(r.base.from_ or "", eff.registry)
    images = [PlannedImage("base", r.base.tag, start, str(containerfile_for(loaded, "base")),
                           base_build_args(loaded, eff, base_from))]
    if r.app:
        app_from = r.base.tag if r.app.from_ == "base" else with_registry(r.app.from_, eff.registry)
        images.append(PlannedImage("app", r.app.tag, app_from, str(containerfile_for(loaded, "app")),
                                   app_build_args(loaded, eff, app_from)))
    lock_file = lock_path_for(loaded.path)
    lock = read_lock(lock_file)
    checkpoints = _checkpoints(loaded, lock, choose_endpoint(r.mirrors.huggingface, env))
    if any(c.source == "hub" and not c.locked for c in checkpoints):
        notes.append(f"Hub checkpoints without a lock entry: their sizes are known after "
                     f"`imgbuild download {loaded.path.name}` writes {lock_file.name}")
    return Plan(str(loaded.path), r.metadata.name, mirror_settings(loaded, eff, env), tuple(images),
                tuple(_files(loaded, eff)), tuple(checkpoints), str(lock_file), lock is not None, tuple(notes))
