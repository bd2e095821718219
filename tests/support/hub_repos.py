"""The data side of the test Hub: repositories, their files, commits and the hashes the Hub reports.

A file is either kept in memory (small test files) or read from a path on disk (the 200 MB test file, or a
folder served by `python -m tests.support.hub_server --root DIR`). Files at or above `lfs_threshold` bytes are
treated as Git LFS files, like the Hub treats files tracked by .gitattributes: the tree API reports their
sha256 (`lfs.oid`) and the resolve endpoint redirects to the "CDN".
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class RepoFile:
    path: str
    data: bytes | None = None
    source: Path | None = None
    _sha256: str | None = None
    _blob_sha1: str | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else os.path.getsize(self.source)  # type: ignore[arg-type]

    def read(self, start: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[start : start + length]
        with open(self.source, "rb") as fh:  # type: ignore[arg-type]
            fh.seek(start)
            return fh.read(length)

    def open(self):
        """A binary stream of the content (a file for disk-backed files)."""
        import io

        return io.BytesIO(self.data) if self.data is not None else open(self.source, "rb")  # type: ignore[arg-type]

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            digest = hashlib.sha256()
            with self.open() as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
            self._sha256 = digest.hexdigest()
        return self._sha256

    @property
    def content_blob_sha1(self) -> str:
        """git's blob id of the content itself (what the Hub reports for files not in LFS)."""
        if self._blob_sha1 is None:
            digest = hashlib.sha1(b"blob %d\0" % self.size)
            with self.open() as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
            self._blob_sha1 = digest.hexdigest()
        return self._blob_sha1


@dataclass
class Repo:
    repo_id: str
    repo_type: str = "model"
    files: dict[str, RepoFile] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    # commit -> {path: RepoFile}: old commits stay resolvable after a file changes, like on the Hub.
    commits: dict[str, dict[str, RepoFile]] = field(default_factory=dict)


class RepoStore:
    """Thread-safe set of repositories; every change makes a new commit on `main`."""

    def __init__(self, lfs_threshold: int = 64 * 1024) -> None:
        self.lfs_threshold = lfs_threshold
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.Lock()

    def add_file(self, repo_id: str, path: str, data: bytes | None = None, source: Path | None = None,
                 repo_type: str = "model") -> str:
        """Add or replace one file; returns the new commit of `main`."""
        with self.lock:
            repo = self.repos.setdefault((repo_type, repo_id), Repo(repo_id, repo_type))
            repo.files[path] = RepoFile(path, data=data, source=source)
            return self._commit(repo)

    def add_folder(self, root: Path) -> None:
        """Serve DIR/<org>/<name>/files... as model repos <org>/<name>."""
        for org in sorted(p for p in root.iterdir() if p.is_dir()):
            for name in sorted(p for p in org.iterdir() if p.is_dir()):
                for file in sorted(f for f in name.rglob("*") if f.is_file()):
                    self.add_file(f"{org.name}/{name.name}", file.relative_to(name).as_posix(), source=file)

    def _commit(self, repo: Repo) -> str:
        digest = hashlib.sha1(repo.repo_id.encode())
        for path in sorted(repo.files):
            digest.update(f"{path}\0{self.blob_id(repo.files[path])}\0".encode())
        digest.update(str(len(repo.commits)).encode())
        commit = digest.hexdigest()
        repo.commits[commit] = dict(repo.files)
        repo.branches["main"] = commit
        return commit

    def is_lfs(self, file: RepoFile) -> bool:
        return file.size >= self.lfs_threshold

    def blob_id(self, file: RepoFile) -> str:
        """The git blob id: of the LFS pointer for LFS files, of the content otherwise."""
        if self.is_lfs(file):
            return git_blob_sha1(self.pointer(file))
        return file.content_blob_sha1

    def pointer(self, file: RepoFile) -> bytes:
        return LFS_POINTER.format(oid=file.sha256, size=file.size).encode()

    def etag(self, file: RepoFile) -> str:
        return file.sha256 if self.is_lfs(file) else file.content_blob_sha1

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> tuple[Repo | None, str | None]:
        """(repo, commit) for a branch name or commit; commit None if the revision is unknown."""
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            return None, None
        if revision in repo.branches:
            return repo, repo.branches[revision]
        return repo, revision if revision in repo.commits else None

    def find_blob(self, sha256: str) -> RepoFile | None:
        with self.lock:
            for repo in self.repos.values():
                for files in repo.commits.values():
                    for file in files.values():
                        if self.is_lfs(file) and file.sha256 == sha256:
                            return file
        return None

    def tree(self, repo: Repo, commit: str, prefix: str, recursive: bool) -> list[dict]:
        """Entries of the tree API, folders included, as the Hub returns them."""
        files = repo.commits[commit]
        base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        entries: dict[str, dict] = {}
        for path in sorted(files):
            if not path.startswith(base):
                continue
            rest = path[len(base):].split("/")
            for depth in range(1, len(rest)):
                folder = base + "/".join(rest[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                                "size": 0, "path": folder})
            if not recursive and len(rest) > 1:
                continue
            file = files[path]
            entry = {"type": "file", "oid": self.blob_id(file), "size": file.size, "path": path}
            if self.is_lfs(file):
                entry["lfs"] = {"oid": file.sha256, "size": file.size, "pointerSize": len(self.pointer(file))}
            entries[path] = entry
        return [entries[key] for key in sorted(entries)]
