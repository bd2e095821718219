"""Put locked checkpoints into an app build context: each entry's files under its `dest`, and the lock.

Hub files come from the verified cache (a hard link when the cache is on the same file system, else a
copy); local files are copied and hashed while copied, so a folder changed since it was locked is caught.
The lock goes into the context as CHECKPOINTS_LOCK_NAME; its sha256 becomes the image label
org.imgbuild.checkpoints-lock.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgbuild.download import (DownloadOptions, DownloadResult, _local_files, blob_path, download_checkpoints)
from imgbuild.errors import ChecksumMismatch, DownloadError
from imgbuild.lockfile import CHECKPOINTS_LOCK_NAME, Lock, LockedFile, write_atomic
from imgbuild.progress import ProgressCallback, ProgressEvent, no_progress
from imgbuild.transfer import BLOCK, new_hasher


@dataclass(frozen=True)
class StageResult:
    lock_file: Path  # the lock inside the build context
    lock_sha256: str
    files: int
    bytes: int
    download: DownloadResult | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"lock_file": str(self.lock_file), "lock_sha256": self.lock_sha256, "files": self.files,
                "bytes": self.bytes}
        if self.download is not None:
            data["download"] = self.download.to_json()
        return data


def prepare_checkpoints(loaded: Any, target_dir: Path, options: DownloadOptions = DownloadOptions(),
                        progress: ProgressCallback = no_progress) -> StageResult:
    """What a build calls: lock and download the recipe's checkpoints, then stage them into target_dir."""
    from imgbuild.lockfile import read_lock

    result = download_checkpoints(loaded, options, progress)
    lock = read_lock(result.lock_path)
    assert lock is not None  # download_checkpoints has just written it
    staged = stage_checkpoints(loaded, lock, target_dir, options, progress)
    return StageResult(staged.lock_file, staged.lock_sha256, staged.files, staged.bytes, result)


def stage_checkpoints(loaded: Any, lock: Lock, target_dir: Path, options: DownloadOptions = DownloadOptions(),
                      progress: ProgressCallback = no_progress) -> StageResult:
    """Place every locked file at target_dir/<dest>/<path> and the lock at target_dir/CHECKPOINTS_LOCK_NAME."""
    count = total = 0
    for checkpoint in lock.checkpoints:
        local: dict[str, Path] = {}
        if checkpoint.source == "local":
            root = (Path(loaded.folder) / checkpoint.key["path"]).resolve()
            local = dict(_local_files(root, _Patterns(checkpoint.key)))
        for file in checkpoint.files:
            target = target_dir / checkpoint.dest / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if checkpoint.source == "hub":
                source = blob_path(options.cache, file)
                if not source.exists():
                    raise DownloadError(f"{checkpoint.dest}/{file.path} is not downloaded yet",
                                        hint="run `imgbuild download RECIPE` first")
                _link_or_copy(source, target)
            else:
                if file.path not in local:
                    raise DownloadError(f"{checkpoint.key['path']}/{file.path} is locked but missing",
                                        hint="run `imgbuild download --update RECIPE` if the folder changed on purpose")
                _copy_verified(local[file.path], target, file, progress, f"stage {checkpoint.dest}/{file.path}")
            count += 1
            total += file.size
    data = lock.dumps().encode()
    lock_file = target_dir / CHECKPOINTS_LOCK_NAME
    write_atomic(lock_file, data)
    return StageResult(lock_file, hashlib.sha256(data).hexdigest(), count, total)


class _Patterns:
    """The include/exclude patterns of a locked local entry, shaped like a LocalCheckpoint for _local_files."""

    def __init__(self, key: dict[str, Any]) -> None:
        self.include = key.get("include") or []
        self.exclude = key.get("exclude") or []


def _link_or_copy(source: Path, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    os.replace(partial, target)


def _copy_verified(source: Path, target: Path, file: LockedFile, progress: ProgressCallback, task: str) -> None:
    algorithm, expected = file.digest
    digest = new_hasher(algorithm, file.size)
    partial = target.with_name(target.name + ".partial")
    done = 0
    with open(source, "rb") as src, open(partial, "wb") as dst:
        while block := src.read(BLOCK * 4):
            digest.update(block)
            dst.write(block)
            done += len(block)
            progress(ProgressEvent(task, done, file.size))
        dst.flush()
        os.fsync(dst.fileno())
    if digest.hexdigest() != expected:
        partial.unlink()
        error = ChecksumMismatch(str(source), expected, digest.hexdigest(), what=algorithm)
        error.hint = "the local checkpoint changed since it was locked; `imgbuild download --update RECIPE` relocks it"
        raise error
    progress(ProgressEvent(task, done, file.size, finished=True))
    os.replace(partial, target)
