"""The thin layer over huggingface_hub: endpoint choice, revision resolution, tree listing, file URLs, auth.

huggingface_hub reads HF_ENDPOINT and HF_HUB_DISABLE_XET once, when it is imported, so the endpoint is
passed explicitly to every call instead of through the environment. Xet transfers go to the Hub's own
storage hosts even when the endpoint is a mirror, so Xet is switched off whenever a mirror is used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from imgbuild.foundation.errors import DownloadError


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at a commit, as the tree API reports it."""

    path: str
    size: int
    sha256: str | None  # LFS files: the lfs.oid
    git_sha1: str  # the git blob id (of the pointer file for LFS files)


def default_endpoint() -> str:
    from huggingface_hub import constants

    return constants._HF_DEFAULT_ENDPOINT


def choose_endpoint(mirror: str | None, env: Mapping[str, str] | None = None) -> str:
    """The recipe's mirrors.huggingface, else HF_ENDPOINT, else huggingface_hub's own default."""
    env = os.environ if env is None else env
    endpoint = mirror or env.get("HF_ENDPOINT") or default_endpoint()
    return endpoint.rstrip("/")


def disable_xet_for_mirror(endpoint: str) -> None:
    """Xet would bypass a mirror; turn it off (environment and the already-imported constant)."""
    if endpoint == default_endpoint():
        return
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_XET = True


class HubClient:
    """Calls to one endpoint with one token (None: HF_TOKEN or the stored login, as huggingface_hub does)."""

    def __init__(self, endpoint: str, token: str | None = None) -> None:
        from huggingface_hub import HfApi

        disable_xet_for_mirror(endpoint)
        self.endpoint = endpoint
        self.token = token
        self.api = HfApi(endpoint=endpoint, token=token, library_name="imgbuild")

    def resolve(self, repo: str, revision: str, repo_type: str) -> str:
        """The commit hash a branch, tag or commit points to."""
        with _hub_errors(repo, revision):
            info = self.api.repo_info(repo, revision=revision, repo_type=repo_type)
        if not info.sha:
            raise DownloadError(f"{repo}@{revision}: the Hub at {self.endpoint} did not report a commit")
        return info.sha

    def list_files(self, repo: str, commit: str, repo_type: str) -> list[RemoteFile]:
        from huggingface_hub.hf_api import RepoFile

        with _hub_errors(repo, commit):
            entries = list(self.api.list_repo_tree(repo, revision=commit, repo_type=repo_type, recursive=True))
        return [
            RemoteFile(e.path, e.size, e.lfs.sha256 if e.lfs else None, e.blob_id)
            for e in entries
            if isinstance(e, RepoFile)
        ]

    def file_url(self, repo: str, commit: str, path: str, repo_type: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(repo, path, repo_type=repo_type, revision=commit, endpoint=self.endpoint)

    def headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        headers = build_hf_headers(token=self.token, library_name="imgbuild")
        # The size and hash checks need the bytes as stored, not a compressed transfer.
        headers["Accept-Encoding"] = "identity"
        return headers


class _hub_errors:
    """Turn huggingface_hub and network errors into DownloadError with a hint."""

    def __init__(self, repo: str, revision: str) -> None:
        self.what = f"{repo}@{revision}"

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, DownloadError):
            return False
        from huggingface_hub import errors

        if isinstance(exc, errors.GatedRepoError):
            raise DownloadError(f"{self.what}: gated repository", hint="set HF_TOKEN to a token with access") from exc
        if isinstance(exc, errors.RevisionNotFoundError):
            raise DownloadError(f"{self.what}: no such revision", hint="check `revision` in the recipe") from exc
        if isinstance(exc, errors.RepositoryNotFoundError):
            raise DownloadError(f"{self.what}: repository not found (or private)",
                                hint="check `repo` in the recipe; set HF_TOKEN for private repos") from exc
        if isinstance(exc, (errors.HfHubHTTPError, OSError)) or type(exc).__module__.startswith("httpx"):
            raise DownloadError(f"{self.what}: {exc}",
                                hint="check the network, or set mirrors.huggingface / HF_ENDPOINT") from exc
        return False
