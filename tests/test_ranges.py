"""Several byte ranges of one file in parallel: correct bytes, resume per range, fallback to one stream."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from imgbuild.checkpoints.fetch import fetch_file
from imgbuild.checkpoints.lockfile import LockedFile
from imgbuild.checkpoints.ranges import plan_ranges
from imgbuild.checkpoints.transfer import TransferOptions
from tests.support.hub_repos import RepoStore
from tests.support.hub_server import Fault, HubServer

pytestmark = pytest.mark.network_local
SIZE = 4_000_000
OPTIONS = TransferOptions(read_timeout=2, base_delay=0.02, max_delay=0.2, connections=4, range_min_size=500_000)


@pytest.fixture()
def setup(tmp_path: Path):
    data = random.Random(3).randbytes(SIZE)
    store = RepoStore()
    store.add_file("org/big", "model.pth", data)
    with HubServer(store) as server:
        file = store.repos[("model", "org/big")].files["model.pth"]
        url = f"{server.endpoint}/org/big/resolve/main/model.pth"
        yield server, url, LockedFile("model.pth", SIZE, sha256=file.sha256), data, tmp_path / "blob"


def _ranged(server: HubServer) -> list[str]:
    return [r for m, p, r, s in server.requests if p.startswith("/blobs/") and s == 206]


def test_plan_ranges_covers_the_file_once() -> None:
    spans = plan_ranges(10_000_003, 4, 1_000_000)
    assert len(spans) == 4 and spans[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))
    assert sum(n for _, n in spans) == 10_000_003
    assert plan_ranges(1_500_000, 8, 1_000_000) == [(0, 1_500_000)]


def test_ranges_in_parallel_give_the_file(setup) -> None:
    server, url, expected, data, target = setup
    server.add_fault(Fault("drop", path="model.pth", after=1_200_000))  # hits one of the ranges
    seen: list[int] = []
    result = fetch_file(url, {}, target, expected, OPTIONS, seen.append)
    assert target.read_bytes() == data
    planned = {f"bytes={a}-{a + n - 1}" for a, n in plan_ranges(SIZE, 4, 500_000)}
    # Four ranges, and the dropped one resumed where the connection broke.
    assert set(_ranged(server)) == planned | {"bytes=1200000-1999999"}
    assert sum(seen) == SIZE and result.fetched >= SIZE
    assert not list(target.parent.glob("blob.*"))[1:]  # only the .lock file is left beside it


def test_ranges_resume_from_their_bytes_on_disk(setup) -> None:
    server, url, expected, data, target = setup
    spans = plan_ranges(SIZE, 4, 500_000)
    etag = expected.sha256
    for i, (start, length) in enumerate(spans):  # what a killed run leaves: a prefix of every range
        target.with_name(f"blob.partial.{i}").write_bytes(data[start : start + length // 2])
    target.with_name("blob.partial.json").write_text(json.dumps(
        {"expected": expected.sha256, "etag": etag, "ranges": [list(s) for s in spans]}))
    result = fetch_file(url, {}, target, expected, OPTIONS)
    assert target.read_bytes() == data
    assert result.resumed_from == sum(n // 2 for _, n in spans)
    assert server.served("model.pth") == SIZE - result.resumed_from


def test_ignored_range_falls_back_to_one_stream(setup) -> None:
    server, url, expected, data, target = setup
    server.add_fault(Fault("ignore_range", path="model.pth", times=4))
    result = fetch_file(url, {}, target, expected, OPTIONS)
    assert target.read_bytes() == data and result.resumed_from == 0
    assert not list(target.parent.glob("blob.partial*"))
