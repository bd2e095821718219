"""The checkpoints lock file: which commit and which exact bytes every checkpoint entry of a recipe means.

It lives beside the recipe as `<recipe stem>.lock.json` (demo.yaml -> demo.lock.json), is written by
`imgbuild download` (and by `build` when an entry is not locked yet) and refreshed with `--update`. Builds
use it, so one recipe gives the same bytes on every machine. Each file is pinned by its sha256 (LFS files:
the Hub's lfs.oid; local files: hashed here) or, for small files the Hub keeps in git, by the git blob sha1.

The same file goes into the app image (CHECKPOINTS_LOCK_NAME) and its sha256 into the image label
`org.imgbuild.checkpoints-lock`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgbuild.foundation.atomicfile import write_atomic
from imgbuild.foundation.errors import DownloadError, Remedy
from imgbuild.recipe.model import HubCheckpoint, LocalCheckpoint

LOCK_VERSION = 1
LOCK_SUFFIX = ".lock.json"
# Name of the lock inside the build context and the image (at the app's working folder).
CHECKPOINTS_LOCK_NAME = "imgbuild.lock.json"
LOCK_LABEL = "org.imgbuild.checkpoints-lock"


def lock_path_for(recipe_path: Path) -> Path:
    """demo.yaml -> demo.lock.json beside it."""
    return recipe_path.with_name(recipe_path.stem + LOCK_SUFFIX)


@dataclass(frozen=True)
class LockedFile:
    path: str  # relative to the entry's dest, '/'-separated
    size: int
    sha256: str | None = None
    git_sha1: str | None = None

    @property
    def digest(self) -> tuple[str, str]:
        """(algorithm, hex) this file is verified by: sha256 when known, else the git blob sha1."""
        if self.sha256:
            return "sha256", self.sha256
        if self.git_sha1:
            return "git-sha1", self.git_sha1
        raise DownloadError(f"{self.path}: the lock gives no hash for this file")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "size": self.size}
        if self.sha256:
            data["sha256"] = self.sha256
        if self.git_sha1:
            data["git_sha1"] = self.git_sha1
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LockedFile":
        return cls(str(data["path"]), int(data["size"]), data.get("sha256"), data.get("git_sha1"))


@dataclass(frozen=True)
class LockedCheckpoint:
    """One checkpoint entry of the recipe, resolved. `key` is the entry as written, to match it again."""

    key: dict[str, Any]
    dest: str
    files: tuple[LockedFile, ...]
    source: str = "hub"  # "hub" or "local"
    commit: str | None = None
    endpoint: str | None = None

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"source": self.source, **self.key, "dest": self.dest}
        if self.source == "hub":
            data.update(commit=self.commit, endpoint=self.endpoint)
        data["files"] = [f.to_json() for f in self.files]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LockedCheckpoint":
        source = data.get("source", "hub")
        names = HUB_KEYS if source == "hub" else LOCAL_KEYS
        key = {name: data.get(name) for name in names}
        files = tuple(LockedFile.from_json(f) for f in data.get("files", []))
        return cls(key, str(data["dest"]), files, source, data.get("commit"), data.get("endpoint"))


HUB_KEYS = ("repo", "repo_type", "revision", "include", "exclude")
LOCAL_KEYS = ("path", "include", "exclude")


def entry_key(entry: HubCheckpoint | LocalCheckpoint) -> dict[str, Any]:
    """The key the lock stores a recipe's checkpoint entry under: the fields that choose its files."""
    names = HUB_KEYS if isinstance(entry, HubCheckpoint) else LOCAL_KEYS
    return {name: getattr(entry, name) for name in names}


@dataclass(frozen=True)
class Lock:
    checkpoints: tuple[LockedCheckpoint, ...] = field(default_factory=tuple)

    def find(self, key: dict[str, Any], dest: str) -> LockedCheckpoint | None:
        for entry in self.checkpoints:
            if entry.key == key and entry.dest == dest:
                return entry
        return None

    def to_json(self) -> dict[str, Any]:
        return {"version": LOCK_VERSION, "checkpoints": [c.to_json() for c in self.checkpoints]}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Lock":
        if data.get("version") != LOCK_VERSION:
            raise DownloadError(f"unsupported lock file version {data.get('version')!r}",
                                remedy=Remedy.RELOCK)
        return cls(tuple(LockedCheckpoint.from_json(c) for c in data.get("checkpoints", [])))


def read_lock(path: Path) -> Lock | None:
    """The lock at `path`, or None if there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return Lock.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise DownloadError(f"{path}: unreadable lock file: {exc}",
                            remedy=Remedy.RELOCK) from exc


def write_lock(path: Path, lock: Lock) -> str:
    """Write the lock atomically; return the sha256 of its bytes."""
    data = lock.dumps().encode()
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()
