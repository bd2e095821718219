"""Locked checkpoints for an app build context: each entry's files under its `dest`, and the lock.

`checkpoint_inputs` is what build.py calls before the app layer: it returns (source, DEST/PATH) pairs that
the build context places under the app folder (imgbuild.build.context.place: hard links where it can), so
nothing is copied twice. Hub files come from the verified cache; local files are hashed again first, so a
folder changed since it was locked is caught. The lock goes into the context as CHECKPOINTS_LOCK_NAME; its
sha256 becomes the image label org.imgbuild.checkpoints-lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgbuild.checkpoints.download import (
    DownloadOptions,
    DownloadResult,
    blob_path,
    download_checkpoints,
    hash_file,
    local_files,
)
from imgbuild.checkpoints.lockfile import CHECKPOINTS_LOCK_NAME, LOCK_LABEL, Lock, LockedFile, read_lock
from imgbuild.foundation.errors import ChecksumMismatch, DownloadError, Remedy
from imgbuild.foundation.progress import ProgressCallback, no_progress

CHANGED = "the local checkpoint changed since it was locked"


@dataclass(frozen=True)
class CheckpointInputs:
    """What the app layer build needs: files to place under the app folder and the lock label."""

    extra_context: tuple[tuple[Path, str], ...]  # (source file, path inside the app folder)
    labels: dict[str, str]  # {org.imgbuild.checkpoints-lock: sha256 of the lock}
    download: DownloadResult

    def to_json(self) -> dict[str, Any]:
        return {"files": len(self.extra_context), "labels": self.labels, "download": self.download.to_json()}


def checkpoint_inputs(loaded: Any, options: DownloadOptions = DownloadOptions(),
                      progress: ProgressCallback = no_progress) -> CheckpointInputs:
    """Lock and download the recipe's checkpoints; return them (and the lock) as build context entries.

    The build places them (hard links where it can) under the app folder: files at DEST/PATH, the lock at
    CHECKPOINTS_LOCK_NAME; the lock's sha256 becomes the label org.imgbuild.checkpoints-lock."""
    result = download_checkpoints(loaded, options, progress)
    lock = read_lock(result.lock_path)
    assert lock is not None  # download_checkpoints has just written it
    pairs = checkpoint_files(loaded, lock, options, progress)
    pairs.append((result.lock_path, CHECKPOINTS_LOCK_NAME))
    return CheckpointInputs(tuple(pairs), {LOCK_LABEL: result.lock_sha256}, result)


def checkpoint_files(loaded: Any, lock: Lock, options: DownloadOptions = DownloadOptions(),
                     progress: ProgressCallback = no_progress) -> list[tuple[Path, str]]:
    """(source, DEST/PATH) of every locked file: verified cache blobs, and local files re-hashed now so that
    a folder changed since it was locked is caught."""
    pairs: list[tuple[Path, str]] = []
    for checkpoint in lock.checkpoints:
        local: dict[str, Path] = {}
        if checkpoint.source == "local":
            root = (Path(loaded.folder) / checkpoint.key["path"]).resolve()
            local = dict(local_files(root, _Patterns(checkpoint.key)))
        for file in checkpoint.files:
            name = f"{checkpoint.dest}/{file.path}"
            if checkpoint.source == "hub":
                source = blob_path(options.cache, file)
                if not source.exists():
                    raise DownloadError(f"{name} is not downloaded yet", hint="run `imgbuild download RECIPE` first")
            else:
                source = local.get(file.path)
                if source is None:
                    raise DownloadError(f"{checkpoint.key['path']}/{file.path} is locked but missing", hint=CHANGED,
                                        remedy=Remedy.RELOCK)
                _verify_local(source, file, progress, f"verify {name}")
            pairs.append((source, name))
    return pairs


class _Patterns:
    """The include/exclude patterns of a locked local entry, shaped like a LocalCheckpoint for _local_files."""

    def __init__(self, key: dict[str, Any]) -> None:
        self.include = key.get("include") or []
        self.exclude = key.get("exclude") or []


def _verify_local(source: Path, file: LockedFile, progress: ProgressCallback, task: str) -> None:
    algorithm, expected = file.digest
    actual = hash_file(source, algorithm, progress, task)
    if actual != expected:
        error = ChecksumMismatch(str(source), expected, actual, what=algorithm)
        error.hint, error.remedy = CHANGED, Remedy.RELOCK
        raise error
