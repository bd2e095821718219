"""One checkpoint file over HTTP into the cache: in one stream, or in byte ranges at once when asked and
worthwhile; two imgbuild runs sharing the cache take turns on a file."""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from pathlib import Path

from imgbuild.checkpoints.lockfile import LockedFile
from imgbuild.checkpoints.ranges import fetch_ranges
from imgbuild.checkpoints.transfer import TransferOptions, TransferResult, fetch_stream


def fetch_file(
    url: str,
    headers: dict[str, str],
    target: Path,
    expected: LockedFile,
    options: TransferOptions = TransferOptions(),
    on_bytes: Callable[[int], None] = lambda n: None,
) -> TransferResult:
    """Download `url` to `target` (through target.partial), verified against `expected`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a") as lock:
        # Two imgbuild runs sharing a cache must not append to the same partial file.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists() and target.stat().st_size == expected.size:
            on_bytes(expected.size)  # the other run finished it meanwhile
            return TransferResult(expected.path, expected.size, 0, expected.size, 0, 0)
        partial = target.with_name(target.name + ".partial")
        if options.connections > 1 and expected.size >= 2 * options.range_min_size and not partial.exists():
            result = fetch_ranges(url, headers, target, expected, options, on_bytes)
            if result is not None:
                return result
        return fetch_stream(url, headers, target, expected, options, on_bytes)
