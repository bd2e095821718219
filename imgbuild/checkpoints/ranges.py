"""Several byte ranges of one big file at the same time, for links that limit each connection.

The file is cut into N ranges; range i goes to NAME.partial.<i>, resumable like a whole file (its size on
disk is its progress), through the same attempt loop as a single stream. When every range is there they
are joined into NAME.partial while hashing, verified and renamed into place. A server that answers a range
with the whole file, or bytes that do not match, make the caller fall back to one stream.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from imgbuild.checkpoints.lockfile import LockedFile
from imgbuild.checkpoints.transfer import (
    BLOCK,
    Partial,
    RangeNotSupported,
    Tally,
    TransferOptions,
    TransferResult,
    complete,
    file_etag,
    new_hasher,
    new_session,
)
from imgbuild.foundation.atomicfile import write_atomic


def plan_ranges(size: int, connections: int, min_size: int) -> list[tuple[int, int]]:
    """(start, length) of each range: at most `connections`, none shorter than about `min_size`."""
    count = max(1, min(connections, size // max(min_size, 1)))
    step = -(-size // count)
    return [(start, min(step, size - start)) for start in range(0, size, step)]


class _NoHash:
    def update(self, data: bytes) -> None:
        pass


class _Range(Partial):
    """One byte range of the file; the whole file is hashed when the ranges are joined."""

    segment = True

    def __init__(self, target: Path, expected: LockedFile, index: int, start: int, length: int) -> None:
        self.path = target.with_name(f"{target.name}.partial.{index}")
        self.state_path = target.with_name(target.name + ".partial.json")
        self.name = f"{expected.path} (bytes {start}-{start + length - 1})"
        self.algorithm, self.expected = expected.digest
        self.base, self.size = start, length
        self.hasher = _NoHash()
        have = self.path.stat().st_size if self.path.exists() else 0
        if have > length:
            self.path.unlink()
            have = 0
        self.offset = have

    def reset_hash(self) -> None:
        self.offset = 0

    def save_state(self, etag: str | None) -> None:
        pass  # the whole file's state is written once, before the ranges start

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.offset = 0


def fetch_ranges(url: str, headers: dict[str, str], target: Path, expected: LockedFile, options: TransferOptions,
                 on_bytes: Callable[[int], None]) -> TransferResult | None:
    """Fetch `target` as parallel ranges; None when it has to be fetched as one stream instead (nothing
    is left behind then, and on_bytes is back at 0)."""
    spans = plan_ranges(expected.size, options.connections, options.range_min_size)
    state_path = target.with_name(target.name + ".partial.json")
    algorithm, digest = expected.digest
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = {}
    etag = _probe(url, headers, options)
    same_ranges = state.get("ranges") == [list(span) for span in spans]
    if state.get("expected") != digest or not same_ranges or (etag and state.get("etag") != etag):
        _remove(target, len(spans), state.get("ranges"))
    write_atomic(state_path, json.dumps({"expected": digest, "algorithm": algorithm, "size": expected.size,
                                         "etag": etag, "ranges": spans}).encode())
    parts = [_Range(target, expected, i, start, length) for i, (start, length) in enumerate(spans)]
    resumed_from = sum(p.offset for p in parts)
    on_bytes(resumed_from)
    tallies = [Tally() for _ in parts]

    def run(i: int) -> None:
        with new_session() as session:
            complete(session, url, headers, parts[i], etag, options, on_bytes, tallies[i])

    try:
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            list(pool.map(run, range(len(parts))))
    except RangeNotSupported:
        on_bytes(-sum(p.offset for p in parts))
        _remove(target, len(parts), spans)
        return None
    partial = target.with_name(target.name + ".partial")
    hasher = new_hasher(algorithm, expected.size)
    with open(partial, "wb") as out:
        for part in parts:
            with open(part.path, "rb") as src:
                while block := src.read(BLOCK * 4):
                    hasher.update(block)
                    out.write(block)
        out.flush()
        os.fsync(out.fileno())
    _remove(target, len(parts), spans)
    if hasher.hexdigest() != digest:
        partial.unlink()
        on_bytes(-expected.size)
        return None
    os.replace(partial, target)
    return TransferResult(expected.path, expected.size, sum(t.fetched for t in tallies), resumed_from,
                          sum(t.attempts for t in tallies), sum(t.restarts for t in tallies))


def _probe(url: str, headers: dict[str, str], options: TransferOptions) -> str | None:
    """The file's ETag from the Hub (X-Linked-Etag on its redirect), or None if it cannot be had now."""
    try:
        with new_session() as session:
            response = session.head(url, headers=headers, allow_redirects=False,
                                    timeout=(options.connect_timeout, options.read_timeout))
            return file_etag(response) if response.status_code < 400 else None
    except requests.RequestException:
        return None


def _remove(target: Path, count: int, spans: object) -> None:
    """Delete the range files and the state of an earlier (or this) ranged download."""
    known = len(spans) if isinstance(spans, list) else 0
    for i in range(max(count, known)):
        target.with_name(f"{target.name}.partial.{i}").unlink(missing_ok=True)
    target.with_name(target.name + ".partial.json").unlink(missing_ok=True)
