"""Checkpoints: lock a recipe's checkpoint entries, download them resumably into the cache.

    lock_checkpoints      recipe entries -> Lock (commit + per-file size and hash), kept beside the recipe
    download_checkpoints  lock + fetch every Hub file into the content-addressed cache (several at a time)
    (imgbuild.checkpoints.stage)      cache / local folders -> app build context under each entry's `dest`, plus the lock

The cache holds each file once, named by its hash (blobs/sha256/ab/abcd..., blobs/git-sha1/..). A blob is
only ever renamed into place after its hash matched, so a blob present with the right size is finished and
is not re-hashed on a rerun; `verify_all` re-hashes them anyway.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from imgbuild.checkpoints.fetch import fetch_file
from imgbuild.checkpoints.hub import HubClient, choose_endpoint
from imgbuild.checkpoints.lockfile import (
    Lock,
    LockedCheckpoint,
    LockedFile,
    entry_key,
    lock_path_for,
    read_lock,
    write_lock,
)
from imgbuild.checkpoints.transfer import BLOCK, TransferOptions, new_hasher
from imgbuild.foundation.errors import DownloadError
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent, no_progress
from imgbuild.recipe.model import HubCheckpoint, LocalCheckpoint


def default_checkpoint_cache() -> Path:
    if os.environ.get("IMGBUILD_CHECKPOINT_CACHE"):
        return Path(os.environ["IMGBUILD_CHECKPOINT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgbuild" / "checkpoints"


@dataclass(frozen=True)
class DownloadOptions:
    update: bool = False  # resolve every entry again (new commits, changed local folders)
    verify_all: bool = False  # re-hash finished files too
    workers: int = 4  # files fetched at the same time
    cache_dir: Path | None = None  # None: default_checkpoint_cache()
    token: str | None = None  # None: HF_TOKEN or the stored login
    transfer: TransferOptions = field(default_factory=TransferOptions)
    env: Mapping[str, str] | None = None  # for HF_ENDPOINT; None: os.environ

    @property
    def cache(self) -> Path:
        return self.cache_dir or default_checkpoint_cache()


@dataclass(frozen=True)
class FileOutcome:
    dest: str
    path: str
    size: int
    action: str  # "cached", "verified", "downloaded", "resumed", "shared" (same bytes as another file), "local"
    fetched: int = 0
    resumed_from: int = 0


@dataclass(frozen=True)
class DownloadResult:
    lock_path: Path
    lock_sha256: str
    lock_changed: bool
    files: tuple[FileOutcome, ...]
    seconds: float

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def fetched_bytes(self) -> int:
        return sum(f.fetched for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {"lock": str(self.lock_path), "lock_sha256": self.lock_sha256, "lock_changed": self.lock_changed,
                "total_bytes": self.total_bytes, "fetched_bytes": self.fetched_bytes,
                "seconds": round(self.seconds, 3), "files": [dict(f.__dict__) for f in self.files]}


def _safe_relpath(path: str, what: str) -> str:
    """A '/'-separated relative path that cannot leave its folder (paths come from recipes and servers)."""
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or any(p in ("..", "") for p in parts) or "\\" in path:
        raise DownloadError(f"{what}: unsafe path {path!r}")
    return str(PurePosixPath(*parts))


def lock_checkpoints(loaded: Any, options: DownloadOptions = DownloadOptions(),
                     progress: ProgressCallback = no_progress) -> tuple[Lock, Path, bool]:
    """The lock for a loaded recipe: entries already locked are kept (unless `update`), others resolved.
    Writes the lock beside the recipe when it changed. Returns (lock, its path, changed)."""
    recipe = loaded.recipe
    entries = list(recipe.app.checkpoints) if recipe.app else []
    path = lock_path_for(Path(loaded.path))
    old = read_lock(path) or Lock()
    endpoint = choose_endpoint(recipe.mirrors.huggingface, options.env)
    client: HubClient | None = None
    locked: list[LockedCheckpoint] = []
    for entry in entries:
        dest = _safe_relpath(entry.dest, "dest")
        previous = None if options.update else old.find(entry_key(entry), dest)
        if previous is not None:
            locked.append(previous)
        elif isinstance(entry, HubCheckpoint):
            client = client or HubClient(endpoint, options.token)
            progress(ProgressEvent("lock", message=f"resolving {entry.repo}@{entry.revision} at {endpoint}"))
            locked.append(_lock_hub(client, entry, dest))
        else:
            locked.append(_lock_local(Path(loaded.folder), entry, dest, progress))
    lock = Lock(tuple(locked))
    changed = lock.to_json() != old.to_json() or not path.exists()
    if changed:
        write_lock(path, lock)
    return lock, path, changed


def _lock_hub(client: HubClient, entry: HubCheckpoint, dest: str) -> LockedCheckpoint:
    from huggingface_hub.utils import filter_repo_objects

    commit = client.resolve(entry.repo, entry.revision, entry.repo_type)
    remote = client.list_files(entry.repo, commit, entry.repo_type)
    chosen = list(filter_repo_objects(remote, allow_patterns=entry.include or None,
                                      ignore_patterns=entry.exclude or None, key=lambda f: f.path))
    if not chosen:
        raise DownloadError(f"{entry.repo}@{commit}: no file matches include={entry.include} exclude={entry.exclude}")
    files = tuple(LockedFile(_safe_relpath(f.path, entry.repo), f.size, f.sha256, None if f.sha256 else f.git_sha1)
                  for f in sorted(chosen, key=lambda f: f.path))
    return LockedCheckpoint(entry_key(entry), dest, files, "hub", commit, client.endpoint)


def local_files(root: Path, entry: LocalCheckpoint) -> list[tuple[str, Path]]:
    from huggingface_hub.utils import filter_repo_objects

    if root.is_file():
        return [(root.name, root)]
    if not root.is_dir():
        raise DownloadError(f"local checkpoint {root} does not exist", hint="check `path` in the recipe")
    found = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    return list(filter_repo_objects(found, allow_patterns=entry.include or None,
                                    ignore_patterns=entry.exclude or None, key=lambda item: item[0]))


def _lock_local(folder: Path, entry: LocalCheckpoint, dest: str, progress: ProgressCallback) -> LockedCheckpoint:
    root = (folder / entry.path).resolve()
    files = []
    for rel, path in local_files(root, entry):
        files.append(LockedFile(rel, path.stat().st_size, hash_file(path, "sha256", progress, f"hash {rel}")))
    if not files:
        raise DownloadError(f"local checkpoint {root}: no file matches the include/exclude patterns")
    return LockedCheckpoint(entry_key(entry), dest, tuple(files), "local")


def hash_file(path: Path, algorithm: str, progress: ProgressCallback = no_progress, task: str = "") -> str:
    size = path.stat().st_size
    digest = new_hasher(algorithm, size)
    done = 0
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK * 4):
            digest.update(block)
            done += len(block)
            if task:
                progress(ProgressEvent(task, done, size))
    if task:
        progress(ProgressEvent(task, done, size, finished=True))
    return digest.hexdigest()


def blob_path(cache: Path, file: LockedFile) -> Path:
    algorithm, hexdigest = file.digest
    return cache / "blobs" / algorithm / hexdigest[:2] / hexdigest


class _Progress:
    """Serializes events from the worker threads: one task for all bytes, one per file in flight.

    Bytes already on disk (finished blobs, partial files) are counted before the first event, so that a
    bar's rate, and so its ETA, reflects only bytes that really come over the network."""

    def __init__(self, progress: ProgressCallback, total: int, already: int) -> None:
        self.progress, self.total, self.done = progress, total, already
        self.lock = threading.Lock()
        self.last = 0.0
        progress(ProgressEvent("checkpoints", self.done, self.total))

    def file(self, task: str, size: int, credit: int) -> tuple[Callable[[int], None], Callable[[], None]]:
        """(on_bytes, finish) for one file whose first `credit` bytes are already counted. The first
        on_bytes call gives the bytes found on disk, later calls the bytes received (negative: dropped)."""
        state = {"done": credit, "first": True}

        def on_bytes(n: int) -> None:
            with self.lock:
                delta = n - state["done"] if state.pop("first", False) else n
                state["done"] += delta
                self.done += delta
                now = time.monotonic()
                if now - self.last >= 0.1 or state["done"] >= size:
                    self.last = now
                    self.progress(ProgressEvent(task, state["done"], size))
                    self.progress(ProgressEvent("checkpoints", self.done, self.total))

        def finish() -> None:
            with self.lock:
                self.done += size - state["done"]
                self.progress(ProgressEvent(task, size, size, finished=True))
                self.progress(ProgressEvent("checkpoints", self.done, self.total))

        return on_bytes, finish


def download_checkpoints(loaded: Any, options: DownloadOptions = DownloadOptions(),
                         progress: ProgressCallback = no_progress) -> DownloadResult:
    """Lock the recipe's checkpoints and make every Hub file present and verified in the cache."""
    started = time.monotonic()
    lock, lock_path, changed = lock_checkpoints(loaded, options, progress)
    endpoint = choose_endpoint(loaded.recipe.mirrors.huggingface, options.env)
    fetcher = _Fetcher(lock, endpoint, options, progress)
    outcomes = fetcher.run()
    data = lock_path.read_bytes()
    return DownloadResult(lock_path, hashlib.sha256(data).hexdigest(), changed, tuple(outcomes),
                          time.monotonic() - started)


class _Fetcher:
    def __init__(self, lock: Lock, endpoint: str, options: DownloadOptions, progress: ProgressCallback) -> None:
        self.lock, self.endpoint, self.options = lock, endpoint, options
        self.cache = options.cache
        self.clients: dict[str, HubClient] = {}
        hub_files = [(c, f) for c in lock.checkpoints if c.source == "hub" for f in c.files]
        self.jobs: dict[Path, tuple[LockedCheckpoint, LockedFile]] = {}
        for checkpoint, file in hub_files:  # one job per blob: equal files are fetched once
            self.jobs.setdefault(blob_path(self.cache, file), (checkpoint, file))
        self.credit = {blob: self._on_disk(blob, file) for blob, (_, file) in self.jobs.items()}
        self.bar = _Progress(progress, sum(f.size for _, f in self.jobs.values()), sum(self.credit.values()))
        self.outcome_by_blob: dict[Path, FileOutcome] = {}

    def run(self) -> list[FileOutcome]:
        with ThreadPoolExecutor(max_workers=max(1, self.options.workers)) as pool:
            results = list(pool.map(self._one, self.jobs.items()))
        self.outcome_by_blob = dict(zip(self.jobs, results))
        outcomes = []
        for checkpoint in self.lock.checkpoints:
            for file in checkpoint.files:
                if checkpoint.source == "local":
                    outcomes.append(FileOutcome(checkpoint.dest, file.path, file.size, "local"))
                else:
                    outcome = self.outcome_by_blob[blob_path(self.cache, file)]
                    if (outcome.dest, outcome.path) != (checkpoint.dest, file.path):
                        # Same bytes as another locked file: fetched (or found) once, for both.
                        outcome = FileOutcome(checkpoint.dest, file.path, file.size, "shared")
                    outcomes.append(outcome)
        return outcomes

    def _client(self) -> HubClient:
        # Files come from today's endpoint (a mirror or not), whatever the lock was made with: the lock's
        # commit and hashes keep the bytes the same.
        with self.bar.lock:
            if self.endpoint not in self.clients:
                self.clients[self.endpoint] = HubClient(self.endpoint, self.options.token)
            return self.clients[self.endpoint]

    def _on_disk(self, blob: Path, file: LockedFile) -> int:
        """Bytes of this file already here: all of a finished blob (unless re-hashed), or a partial file."""
        if blob.exists() and blob.stat().st_size == file.size and not self.options.verify_all:
            return file.size
        partial = blob.with_name(blob.name + ".partial")
        size = partial.stat().st_size if partial.exists() else 0
        return size if size <= file.size else 0

    def _one(self, job: tuple[Path, tuple[LockedCheckpoint, LockedFile]]) -> FileOutcome:
        blob, (checkpoint, file) = job
        task = f"{checkpoint.dest}/{file.path}"
        on_bytes, finish = self.bar.file(task, file.size, self.credit[blob])
        if blob.exists() and blob.stat().st_size == file.size:
            if not self.options.verify_all:
                finish()
                return FileOutcome(checkpoint.dest, file.path, file.size, "cached")
            algorithm, expected = file.digest
            if hash_file(blob, algorithm) == expected:
                finish()
                return FileOutcome(checkpoint.dest, file.path, file.size, "verified")
            blob.unlink()
        client = self._client()
        url = client.file_url(checkpoint.key["repo"], checkpoint.commit, file.path, checkpoint.key["repo_type"])
        result = fetch_file(url, client.headers(), blob, file, self.options.transfer, on_bytes)
        finish()
        action = "resumed" if result.resumed_from else "downloaded"
        return FileOutcome(checkpoint.dest, file.path, file.size, action, result.fetched, result.resumed_from)
