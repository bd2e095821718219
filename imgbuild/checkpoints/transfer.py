"""One file over HTTP: resumable across runs, verified while written, retried while bytes keep arriving.

huggingface_hub resumes only inside one call and deletes its randomly named partial files, so a download
killed at 50 % restarts from zero. Here the bytes on disk are the state: `NAME.partial` beside the final
path plus a tiny `NAME.partial.json` with the expected hash and the ETag seen when the bytes were fetched.
A rerun re-hashes the partial bytes and asks for the rest with a Range request; the file starts over only
when the server ignores Range (answers 200) or the ETag says the file changed upstream.

Every attempt starts at the Hub's resolve URL, so a redirect to a signed CDN URL is resolved afresh (signed
URLs expire). The read timeout is the stall watchdog. Failed attempts back off exponentially with jitter;
the count of failures resets whenever bytes arrived, so a slow but living link is never given up on.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from imgbuild.checkpoints.lockfile import LockedFile
from imgbuild.foundation.atomicfile import write_atomic
from imgbuild.foundation.errors import ChecksumMismatch, DiskFull, DownloadError
from imgbuild.foundation.hostconfig import ca_bundle

BLOCK = 1 << 20
RETRY_STATUS = {403, 408, 429, 500, 502, 503, 504}  # 403: a signed CDN URL that expired


@dataclass(frozen=True)
class TransferOptions:
    connect_timeout: float = 20.0
    read_timeout: float = 60.0  # stall watchdog: no byte for this long -> reconnect
    base_delay: float = 1.0
    max_delay: float = 60.0
    attempts_without_progress: int = 8
    connections: int = 1  # byte ranges of one big file fetched at the same time (imgbuild.checkpoints.ranges)
    range_min_size: int = 32 << 20  # no range shorter than this


@dataclass(frozen=True)
class TransferResult:
    path: str
    size: int
    fetched: int  # bytes received over the network by this run (including discarded ones)
    resumed_from: int  # bytes already on disk when this run started
    attempts: int
    restarts: int  # times the partial file was thrown away (Range ignored, changed upstream, bad hash)

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def new_hasher(algorithm: str, size: int):
    """sha256, or git's blob sha1 (sha1 over "blob <size>\\0" + content)."""
    if algorithm == "sha256":
        return hashlib.sha256()
    digest = hashlib.sha1()
    digest.update(b"blob %d\0" % size)
    return digest


class _Retry(Exception):
    """An attempt failed in a way worth another try."""


class RangeNotSupported(Exception):
    """The server answered a byte range with the whole file: ranges cannot be fetched in parallel."""


class Partial:
    """The partial file, its running hash and its state file."""

    base = 0  # where this part starts in the file
    segment = False  # a byte range of the file, fetched beside others

    def range_header(self) -> str | None:
        if self.segment:
            return f"bytes={self.base + self.offset}-{self.base + self.size - 1}"
        return f"bytes={self.offset}-" if self.offset else None

    def __init__(self, target: Path, expected: LockedFile) -> None:
        self.path = target.with_name(target.name + ".partial")
        self.state_path = target.with_name(target.name + ".partial.json")
        self.name = expected.path
        self.algorithm, self.expected = expected.digest
        self.size = expected.size
        self.reset_hash()

    def reset_hash(self) -> None:
        self.hasher = new_hasher(self.algorithm, self.size)
        self.offset = 0

    def load(self) -> str | None:
        """Take over the bytes already on disk (re-hashing them); return the ETag they came with."""
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            state = {}
        for index in range(len(state.get("ranges") or [])):
            # Ranges of an earlier run with several connections; this run takes the file as one stream.
            self.path.with_name(f"{self.path.name}.{index}").unlink(missing_ok=True)
        if state.get("expected") != self.expected or not self.path.exists() or self.path.stat().st_size > self.size:
            self.discard()
            return None
        with open(self.path, "rb") as fh:
            while block := fh.read(BLOCK):
                self.hasher.update(block)
                self.offset += len(block)
        return state.get("etag")

    def save_state(self, etag: str | None) -> None:
        data = {"expected": self.expected, "algorithm": self.algorithm, "size": self.size, "etag": etag}
        write_atomic(self.state_path, json.dumps(data).encode())

    def discard(self) -> None:
        for path in (self.path, self.state_path):
            path.unlink(missing_ok=True)
        self.reset_hash()


def new_session() -> requests.Session:
    """A session that trusts what this host trusts (its CA bundle includes a TLS-intercepting proxy's CA,
    which requests' own certifi bundle does not)."""
    session = requests.Session()
    session.verify = ca_bundle() or True
    return session


class Tally:
    """What the attempts on one part cost: bytes received, attempts, restarts."""

    def __init__(self) -> None:
        self.fetched = self.attempts = self.restarts = 0


def fetch_stream(url: str, headers: dict[str, str], target: Path, expected: LockedFile, options: TransferOptions,
                  on_bytes: Callable[[int], None]) -> TransferResult:
    part = Partial(target, expected)
    etag = part.load()
    resumed_from = part.offset
    on_bytes(resumed_from)
    tally = Tally()
    with new_session() as session:
        for _ in range(2):  # bad bytes are thrown away and fetched once more before giving up
            etag = complete(session, url, headers, part, etag, options, on_bytes, tally)
            actual = part.hasher.hexdigest()
            if actual == part.expected:
                os.replace(part.path, target)
                part.state_path.unlink(missing_ok=True)
                return TransferResult(expected.path, expected.size, tally.fetched, resumed_from, tally.attempts,
                                      tally.restarts)
            on_bytes(-part.offset)
            part.discard()
            tally.restarts += 1
    raise ChecksumMismatch(expected.path, part.expected, actual, what=part.algorithm)


def complete(session: requests.Session, url: str, headers: dict[str, str], part: "Partial", etag: str | None,
             options: TransferOptions, on_bytes: Callable[[int], None], tally: Tally) -> str | None:
    """Attempt until the part holds all its bytes; back off between failed attempts, and give up only after
    several attempts in a row brought no byte. Returns the ETag the bytes came with."""
    failures = 0
    while part.offset < part.size or not part.path.exists():
        tally.attempts += 1
        try:
            got, etag, restarted = _attempt(session, url, headers, part, etag, options, on_bytes)
        except _Retry as exc:
            message, got, restarted = exc.args
            failures = 0 if got else failures + 1
            if failures > options.attempts_without_progress:
                raise DownloadError(
                    f"{part.name}: giving up after {tally.attempts} attempts: {message}",
                    hint="no data arrived for several attempts; rerun later, the bytes on disk are kept",
                ) from None
            delay = min(options.max_delay, options.base_delay * 2 ** max(failures - 1, 0))
            time.sleep(delay * random.uniform(0.5, 1.5))
        tally.fetched += got
        tally.restarts += restarted
    return etag


def _attempt(session, url, headers, part: Partial, etag, options, on_bytes) -> tuple[int, str | None, int]:
    """One GET (after a fresh redirect); returns (bytes received, etag, restarts). Raises _Retry."""
    timeout = (options.connect_timeout, options.read_timeout)
    restarted = received = 0
    try:
        response, new_etag, restarted = _open(session, url, headers, part, etag, timeout, on_bytes)
        with response:
            if response.status_code == 206 and etag and new_etag and new_etag != etag:
                # A server that ignores If-Range sent the rest of a changed file: the bytes on disk are stale.
                on_bytes(-part.offset)
                part.discard()
                raise _Retry("file changed upstream; starting over", 0, restarted + 1)
            if new_etag != etag or not part.state_path.exists():
                etag = new_etag
                part.save_state(etag)
            if response.status_code == 416:
                # The bytes on disk do not fit the file the server has: start over.
                on_bytes(-part.offset)
                part.discard()
                raise _Retry("HTTP 416 for the bytes on disk; starting over", 0, restarted + 1)
            if response.status_code in RETRY_STATUS:
                raise _Retry(f"HTTP {response.status_code}", 0, restarted)
            if response.status_code not in (200, 206):
                raise DownloadError(f"{part.name}: HTTP {response.status_code} from {response.url}",
                                    hint="check the repo, the revision and HF_TOKEN")
            if part.segment and response.status_code == 200:
                raise RangeNotSupported()
            if part.offset and response.status_code == 200:
                # Range ignored: the body is the whole file, so start the partial file over with it.
                on_bytes(-part.offset)
                part.path.unlink(missing_ok=True)
                part.reset_hash()
                restarted += 1
            elif response.status_code == 206 and not _range_starts_at(response, part.base + part.offset):
                raise _Retry("server answered another byte range", 0, restarted)
            received = _stream(response, part, on_bytes)
    except (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
        raise _Retry(f"{type(exc).__name__}: {exc}", getattr(exc, "received", 0), restarted) from None
    if part.offset < part.size:
        raise _Retry(f"connection closed at byte {part.offset} of {part.size}", received, restarted)
    return received, etag, restarted


def _open(session: requests.Session, url: str, headers: dict[str, str], part: Partial, etag: str | None,
          timeout, on_bytes: Callable[[int], None]) -> tuple[requests.Response, str | None, int]:
    """GET the resolve URL and follow its redirect by hand, without the token once it leaves the Hub's
    origin. Returns the response, the file's ETag (the Hub's X-Linked-Etag on a redirect) and 1 if the
    bytes on disk were dropped because the file changed upstream."""
    linked, restarted = None, 0
    for hop in range(5):
        wanted = part.range_header()
        extra = {"Range": wanted} if wanted else {}
        if extra and etag and hop == 0:
            # Only the Hub itself answers with the ETag the partial bytes were fetched under.
            extra["If-Range"] = f'"{etag}"'
        response = session.get(url, headers={**headers, **extra}, timeout=timeout, stream=True, allow_redirects=False)
        if not response.is_redirect:
            return response, linked or file_etag(response), restarted
        location = urljoin(url, response.headers["Location"])
        linked = linked or file_etag(response)
        response.close()
        if etag and linked and linked != etag and part.offset:
            # Changed upstream since these bytes were fetched: ask the new file from its start.
            on_bytes(-part.offset)
            part.discard()
            restarted = 1
        if _origin(location) != _origin(url):
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        url = location
    raise DownloadError(f"too many redirects for {url}")


def file_etag(response: requests.Response) -> str | None:
    value = response.headers.get("X-Linked-Etag") or response.headers.get("ETag")
    return value.removeprefix("W/").strip('"') if value else None


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _range_starts_at(response: requests.Response, offset: int) -> bool:
    value = response.headers.get("Content-Range", "")
    return value.startswith(f"bytes {offset}-")


def _stream(response: requests.Response, part: Partial, on_bytes: Callable[[int], None]) -> int:
    """Append the body to the partial file, hashing as it goes; bytes are on disk as soon as they arrive."""
    received = 0
    raw = response.raw
    try:
        with open(part.path, "ab", buffering=0) as fh:
            while part.offset < part.size:
                block = raw.read1(BLOCK, decode_content=True)
                if not block:
                    break
                if part.offset + len(block) > part.size:
                    block = block[: part.size - part.offset]
                try:
                    fh.write(block)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise DiskFull(str(part.path), part.size - part.offset) from exc
                    raise
                part.hasher.update(block)
                part.offset += len(block)
                received += len(block)
                on_bytes(len(block))
            if part.offset == part.size:
                os.fsync(fh.fileno())
    except (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
        exc.received = received  # type: ignore[attr-defined]
        raise
    return received
