"""Checkpoint downloads against the local Hub-protocol server: resume across runs, faults, lock, staging."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgbuild.build.context import place
from imgbuild.checkpoints.download import DownloadOptions, blob_path, download_checkpoints, lock_checkpoints
from imgbuild.checkpoints.lockfile import CHECKPOINTS_LOCK_NAME, LOCK_LABEL, LockedFile, lock_path_for, read_lock
from imgbuild.checkpoints.stage import CheckpointInputs, checkpoint_inputs
from imgbuild.checkpoints.transfer import TransferOptions
from imgbuild.foundation.errors import ChecksumMismatch, DownloadError, RecipeError
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent, no_progress
from tests.support.hub_repos import RepoStore
from tests.support.hub_server import Fault, HubServer
from tests.support.recipes import load, write_recipe

pytestmark = pytest.mark.network_local
REPO_ROOT = Path(__file__).resolve().parent.parent
BIG = 200 * 1024 * 1024
FAST = TransferOptions(connect_timeout=5, read_timeout=2, base_delay=0.02, max_delay=0.2, attempts_without_progress=4)


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 MiB of seeded random bytes, written once per test session."""
    path = tmp_path_factory.mktemp("big") / "model.pth"
    rng = random.Random(1234)
    with open(path, "wb") as fh:
        for _ in range(BIG // (8 << 20)):
            fh.write(rng.randbytes(8 << 20))
    return path


@pytest.fixture()
def hub():
    store = RepoStore(lfs_threshold=100_000)
    store.add_file("org/voice", "config.json", b'{"sample_rate": 44100}\n')
    store.add_file("org/voice", "model.pth", random.Random(7).randbytes(3_000_000))
    with HubServer(store) as server:
        yield server


def _setup(tmp_path: Path, server: HubServer, entry: dict | None = None):
    recipe = write_recipe(tmp_path / "recipe", [entry or {"repo": "org/voice", "dest": "checkpoints/voice"}],
                          mirror=server.endpoint)
    return load(recipe), DownloadOptions(cache_dir=tmp_path / "cache", transfer=FAST)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stage_into(loaded: object, target: Path, options: DownloadOptions,
               progress: ProgressCallback = no_progress) -> CheckpointInputs:
    """What build does with the checkpoints: lock, download, and place them in the app's build context."""
    inputs = checkpoint_inputs(loaded, options, progress)
    for source, name in inputs.extra_context:
        place(source, target / name)
    return inputs


def _model(server: HubServer) -> bytes:
    return server.store.repos[("model", "org/voice")].files["model.pth"].read(0, 10**9)


def test_download_locks_and_stages(hub: HubServer, tmp_path: Path) -> None:
    loaded, options = _setup(tmp_path, hub)
    events: list[ProgressEvent] = []
    result = stage_into(loaded, tmp_path / "ctx", options, events.append)
    lock = read_lock(lock_path_for(Path(loaded.path)))
    entry = lock.checkpoints[0]
    assert entry.commit == hub.store.repos[("model", "org/voice")].branches["main"]
    assert entry.endpoint == hub.endpoint
    files = {f.path: f for f in entry.files}
    assert files["model.pth"].sha256 == _sha(_model(hub)) and files["model.pth"].git_sha1 is None
    assert files["config.json"].sha256 is None and files["config.json"].git_sha1
    staged = tmp_path / "ctx" / "checkpoints" / "voice"
    assert (staged / "model.pth").read_bytes() == _model(hub)
    assert (staged / "config.json").read_bytes() == b'{"sample_rate": 44100}\n'
    in_context = (tmp_path / "ctx" / CHECKPOINTS_LOCK_NAME).read_bytes()
    assert in_context == lock_path_for(Path(loaded.path)).read_bytes()
    assert result.labels[LOCK_LABEL] == _sha(in_context)
    totals = [e for e in events if e.task == "checkpoints"]
    assert totals[-1].done == totals[-1].total == 3_000_000 + 23
    assert {e.task for e in events if e.finished} >= {"checkpoints/voice/model.pth", "checkpoints/voice/config.json"}
    assert not list((tmp_path / "cache").rglob("*.partial*"))


def test_rerun_skips_finished_files_and_verify_all_rehashes(hub: HubServer, tmp_path: Path) -> None:
    loaded, options = _setup(tmp_path, hub)
    download_checkpoints(loaded, options)
    hub.reset_counters()
    again = download_checkpoints(loaded, options)
    assert {f.action for f in again.files} == {"cached"} and hub.served() == 0
    lock = read_lock(again.lock_path)
    blob = blob_path(tmp_path / "cache", next(f for f in lock.checkpoints[0].files if f.path == "model.pth"))
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF  # bit rot in the cache, same size
    blob.write_bytes(bytes(data))
    from dataclasses import replace

    checked = download_checkpoints(loaded, replace(options, verify_all=True))
    actions = {f.path: f.action for f in checked.files}
    assert actions == {"config.json": "verified", "model.pth": "downloaded"}
    assert blob.read_bytes() == _model(hub)


def test_failures_are_retried_and_resumed(hub: HubServer, tmp_path: Path) -> None:
    loaded, options = _setup(tmp_path, hub, {"repo": "org/voice", "include": ["*.pth"], "dest": "m"})
    hub.add_fault(Fault("status500", path="model.pth", times=2))
    hub.add_fault(Fault("drop", path="model.pth", after=1_000_000))
    hub.add_fault(Fault("stall", path="model.pth", after=2_000_000, seconds=5))  # longer than read_timeout
    result = download_checkpoints(loaded, options)
    [file] = result.files
    assert file.path == "model.pth" and blob_path(options.cache, read_lock(result.lock_path).checkpoints[0].files[0])\
        .read_bytes() == _model(hub)
    ranges = [r for m, p, r, s in hub.requests if p.startswith("/blobs/") and s == 206]
    assert ranges[0] == "bytes=1000000-" and ranges[1].startswith("bytes=2")
    assert hub.served("model.pth") < 3_000_000 + 1_100_000  # only the stalled tail was sent twice at most


def test_ignored_range_restarts_cleanly(hub: HubServer, tmp_path: Path) -> None:
    loaded, options = _setup(tmp_path, hub, {"repo": "org/voice", "include": ["model.pth"], "dest": "m"})
    hub.add_fault(Fault("drop", path="model.pth", after=1_500_000))
    hub.add_fault(Fault("ignore_range", path="model.pth"))
    result = download_checkpoints(loaded, options)
    assert hub.served("model.pth") == 1_500_000 + 3_000_000
    assert result.files[0].fetched == 4_500_000
    lock = read_lock(result.lock_path)
    assert blob_path(options.cache, lock.checkpoints[0].files[0]).read_bytes() == _model(hub)


def test_corrupted_bytes_are_caught(hub: HubServer, tmp_path: Path) -> None:
    loaded, options = _setup(tmp_path, hub, {"repo": "org/voice", "include": ["model.pth"], "dest": "m"})
    hub.add_fault(Fault("corrupt", path="model.pth", after=123_456))
    download_checkpoints(loaded, options)  # one bad copy: thrown away, fetched again
    assert hub.served("model.pth") == 6_000_000
    lock = read_lock(lock_path_for(Path(loaded.path)))
    blob = blob_path(options.cache, lock.checkpoints[0].files[0])
    assert blob.read_bytes() == _model(hub)
    blob.unlink()
    hub.add_fault(Fault("corrupt", path="model.pth", after=10, times=2))
    with pytest.raises(ChecksumMismatch) as caught:
        download_checkpoints(loaded, options)
    assert caught.value.path == "model.pth" and caught.value.expected == _sha(_model(hub))
    assert caught.value.actual != caught.value.expected and caught.value.actual in str(caught.value)
    assert not blob.exists() and not list(blob.parent.glob("*.partial*"))


def test_changed_upstream_restarts_the_partial_file(hub: HubServer, tmp_path: Path) -> None:
    loaded, options = _setup(tmp_path, hub, {"repo": "org/voice", "include": ["model.pth"], "dest": "m"})
    lock, _, _ = lock_checkpoints(loaded, options)
    blob = blob_path(options.cache, lock.checkpoints[0].files[0])
    blob.parent.mkdir(parents=True)
    # Bytes left by an earlier run of a file whose ETag was different: they must not be trusted.
    blob.with_name(blob.name + ".partial").write_bytes(b"x" * 500_000)
    blob.with_name(blob.name + ".partial.json").write_text(json.dumps(
        {"expected": lock.checkpoints[0].files[0].sha256, "etag": "0" * 64}))
    result = download_checkpoints(loaded, options)
    assert blob.read_bytes() == _model(hub) and result.files[0].action == "resumed"
    assert hub.served("model.pth") == 3_000_000


def test_lock_pins_the_commit_until_update(hub: HubServer, tmp_path: Path) -> None:
    loaded, options = _setup(tmp_path, hub)
    first, path, changed = lock_checkpoints(loaded, options)
    assert changed
    hub.store.add_file("org/voice", "config.json", b'{"sample_rate": 22050}\n')  # main moves on
    again, _, changed = lock_checkpoints(loaded, options)
    assert not changed and again == first
    from dataclasses import replace

    updated, _, changed = lock_checkpoints(loaded, replace(options, update=True))
    assert changed and updated.checkpoints[0].commit != first.checkpoints[0].commit
    # The old commit is still served: a build from the old lock gets the old bytes.
    staged = stage_into(loaded, tmp_path / "ctx", options)
    assert (tmp_path / "ctx/checkpoints/voice/config.json").read_bytes() == b'{"sample_rate": 22050}\n'
    assert staged.labels[LOCK_LABEL] == _sha(path.read_bytes())


def test_token_goes_to_the_hub_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RepoStore(lfs_threshold=100)
    store.add_file("org/private", "weights.bin", os.urandom(5000))
    with HubServer(store, token="hf_secret") as server:
        loaded, options = _setup(tmp_path, server, {"repo": "org/private", "dest": "w"})
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        with pytest.raises(DownloadError, match="not found"):
            download_checkpoints(loaded, options)
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        download_checkpoints(loaded, options)
    assert any(p.startswith("/blobs/") and s == 200 for _, p, _, s in server.requests)


def test_local_checkpoint_is_hashed_locked_and_verified(tmp_path: Path) -> None:
    merged = tmp_path / "recipe" / "merged"
    (merged / "sub").mkdir(parents=True)
    (merged / "model.pth").write_bytes(os.urandom(100_000))
    (merged / "sub" / "config.json").write_bytes(b"{}")
    (merged / "notes.txt").write_text("not wanted")
    recipe = write_recipe(tmp_path / "recipe", [{"path": "merged", "exclude": ["*.txt"], "dest": "checkpoints/m"}])
    loaded = load(recipe)
    options = DownloadOptions(cache_dir=tmp_path / "cache")
    stage_into(loaded, tmp_path / "ctx", options)
    lock = read_lock(lock_path_for(recipe))
    assert {f.path: f.sha256 for f in lock.checkpoints[0].files} == {
        "model.pth": _sha((merged / "model.pth").read_bytes()), "sub/config.json": _sha(b"{}")}
    assert (tmp_path / "ctx/checkpoints/m/model.pth").read_bytes() == (merged / "model.pth").read_bytes()
    assert not (tmp_path / "ctx/checkpoints/m/notes.txt").exists()
    (merged / "sub" / "config.json").write_bytes(b"{ }")
    with pytest.raises(ChecksumMismatch, match="config.json"):
        stage_into(loaded, tmp_path / "ctx2", options)
    from dataclasses import replace

    stage_into(loaded, tmp_path / "ctx3", replace(options, update=True))
    assert (tmp_path / "ctx3/checkpoints/m/sub/config.json").read_bytes() == b"{ }"


def test_unsafe_paths_are_refused(tmp_path: Path, hub: HubServer) -> None:
    """A dest outside the app folder is refused when the recipe is read, before anything is fetched."""
    with pytest.raises(RecipeError, match=r"dest must be a relative path inside the app folder") as refused:
        _setup(tmp_path, hub, {"repo": "org/voice", "dest": "../outside"})
    assert refused.value.line is not None and refused.value.key == "app.checkpoints[0].dest"
    assert LockedFile("a", 1, git_sha1="ab").digest == ("git-sha1", "ab")


def test_killed_download_resumes_from_the_bytes_on_disk(big_file: Path, tmp_path: Path) -> None:
    store = RepoStore()
    store.add_file("org/big", "model.pth", source=big_file)
    expected = store.repos[("model", "org/big")].files["model.pth"].sha256
    with HubServer(store) as server:
        recipe = write_recipe(tmp_path / "recipe", [{"repo": "org/big", "dest": "m"}], mirror=server.endpoint)
        cache = tmp_path / "cache"
        server.add_fault(Fault("stall", path="model.pth", after=BIG // 2))  # hold the line at 50 %
        child = subprocess.Popen([sys.executable, "-m", "imgbuild", "download", str(recipe), "--json"], cwd=REPO_ROOT,
                                 env={**os.environ, "IMGBUILD_CHECKPOINT_CACHE": str(cache)},
                                 stdout=subprocess.DEVNULL)
        partial = cache / "blobs" / "sha256" / expected[:2] / f"{expected}.partial"
        deadline = time.monotonic() + 120
        while not (server.served("model.pth") >= BIG // 2 and partial.exists()
                   and partial.stat().st_size == server.served("model.pth")):
            assert time.monotonic() < deadline and child.poll() is None, "the download never reached 50 %"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        server.release()
        first = server.served("model.pth")
        on_disk = partial.stat().st_size
        server.reset_counters()
        events: list[ProgressEvent] = []
        result = download_checkpoints(load(recipe), DownloadOptions(cache_dir=cache), events.append)
        again = server.served("model.pth")
    # Bytes found on disk are counted before any byte arrives, so the bar's rate and ETA stay honest.
    totals = [e.done for e in events if e.task == "checkpoints"]
    assert totals[0] == on_disk and totals[-1] == BIG and totals == sorted(totals)
    assert result.files[0].action == "resumed" and result.files[0].resumed_from == on_disk
    refetched = first + again - BIG
    print(f"killed at {on_disk} of {BIG} bytes; fetched again after the kill: {refetched} bytes")
    assert refetched <= BIG // 100, f"{refetched} bytes fetched twice"
    blob = cache / "blobs" / "sha256" / expected[:2] / expected
    digest = hashlib.sha256()
    with open(blob, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    assert digest.hexdigest() == expected
    assert not partial.exists()


def test_cli_download_json_and_errors(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from imgbuild.cli import app

    recipe = write_recipe(tmp_path / "recipe", [{"repo": "org/voice", "dest": "checkpoints/voice"}],
                          mirror=hub.endpoint)
    monkeypatch.setenv("IMGBUILD_CHECKPOINT_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    result = runner.invoke(app, ["download", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["lock_changed"] and data["fetched_bytes"] == data["total_bytes"] == 3_000_023
    assert {f["action"] for f in data["files"]} == {"downloaded"}
    again = json.loads(runner.invoke(app, ["download", str(recipe), "--json", "--verify-all"]).stdout)
    assert {f["action"] for f in again["files"]} == {"verified"} and again["fetched_bytes"] == 0
    missing = write_recipe(tmp_path / "other", [{"repo": "org/missing", "dest": "x"}], mirror=hub.endpoint)
    failed = runner.invoke(app, ["download", str(missing)])
    assert failed.exit_code == 1 and "org/missing@main: repository not found" in failed.output


def test_equal_files_are_fetched_once(hub: HubServer, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "recipe", [{"repo": "org/voice", "dest": "a"},
                                                {"repo": "org/voice", "include": ["*.pth"], "dest": "b"}],
                          mirror=hub.endpoint)
    result = stage_into(load(recipe), tmp_path / "ctx", DownloadOptions(cache_dir=tmp_path / "cache"))
    actions = {(f.dest, f.path): f.action for f in result.download.files}
    assert actions == {("a", "config.json"): "downloaded", ("a", "model.pth"): "downloaded",
                       ("b", "model.pth"): "shared"}
    assert hub.served("model.pth") == 3_000_000
    assert (tmp_path / "ctx/a/model.pth").read_bytes() == (tmp_path / "ctx/b/model.pth").read_bytes() == _model(hub)
