"""restore.sh and README.txt's by-hand steps on synthetic sets (real sh, zstd, head, sha256sum; no engine):
each refuses what it unpacks when it is not what the set manifest says, before anything is loaded."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from imgbuild.archive.volume_docs import SetFacts, readme, restore_script
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import SetManifest, dump_manifest, parse_manifest
from imgbuild.setformat.volume_files import docker_manifest
from tests.support import synthetic_set
from tests.test_hostile_set import rle_bomb

pytestmark = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")


def layer_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        data = b"hello\n" * 1000
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def facts_of(manifest: SetManifest) -> SetFacts:
    return SetFacts(set_id=manifest.set_id, name=manifest.name, created=manifest.created,
                    tool_version=manifest.tool.version, volume_count=manifest.volume_count,
                    images=list(manifest.images), layers=list(manifest.layers),
                    compression_long=manifest.compression.long)


def restorable_set(out: Path, part: bytes | None = None, size: int | None = None) -> Path:
    """A one-volume synthetic set whose restore.sh, README.txt and images/manifest.json are the real ones;
    its layer is a small tar (or ``part``, said to decompress to ``size`` bytes). Returns the volume folder."""
    tar = layer_tar()
    part = part if part is not None else zstandard.ZstdCompressor().compress(tar)
    raw: dict[str, Any] = json.loads(dump_manifest(synthetic_set.make_set(out, [len(part)])))
    folder = out / raw["volumes"][0]["folder"]
    layer = raw["layers"][0]
    layer.update(diff_id="sha256:" + hashlib.sha256(tar).hexdigest(), size=size or len(tar),
                 compressed_size=len(part), compressed_sha256=hashlib.sha256(part).hexdigest())
    layer["parts"][0].update(size=len(part), sha256=hashlib.sha256(part).hexdigest())
    raw["images"][0]["layers"] = [layer["diff_id"]]
    manifest = parse_manifest(json.dumps(_with_files(raw, folder, {layer["parts"][0]["path"]: part})).encode(), "t")
    facts = facts_of(manifest)
    files = {layout.DOCKER_MANIFEST_PATH: docker_manifest(facts.images, facts.layers),
             layout.RESTORE_NAME: restore_script(facts), layout.README_NAME: readme(facts, 1)}
    manifest = parse_manifest(json.dumps(_with_files(raw, folder, files)).encode(), "t")
    synthetic_set.write_metadata(out, manifest)
    return folder


def _with_files(raw: dict[str, Any], folder: Path, files: dict[str, bytes]) -> dict[str, Any]:
    for path, data in files.items():
        (folder / path).write_bytes(data)
        for entry in raw["volumes"][0]["files"]:
            if entry["path"] == path:
                entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    return raw


def run_restore(folder: Path, tmp: Path, path: str | None = None) -> subprocess.CompletedProcess[str]:
    # `false` as the engine: these sets must be refused before the engine is ever called.
    env = {"PATH": path or "/usr/local/bin:/usr/bin:/bin"}
    return subprocess.run(["sh", str(folder / layout.RESTORE_NAME), "--engine", "false", "--tmp", str(tmp)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_a_flipped_bit_in_a_config_stops_restore_before_loading(tmp_path: Path) -> None:
    folder = restorable_set(tmp_path / "set")
    config = folder / layout.config_path(1)
    data = bytearray(config.read_bytes())
    data[10] ^= 0x01
    config.write_bytes(bytes(data))
    proc = run_restore(folder, tmp_path)
    assert proc.returncode == 1 and "config01.json has sha256" in proc.stderr, proc.stderr
    assert "loading into" not in proc.stderr


def test_a_changed_images_manifest_stops_restore(tmp_path: Path) -> None:
    folder = restorable_set(tmp_path / "set")
    listing = folder / layout.DOCKER_MANIFEST_PATH
    listing.write_text(listing.read_text().replace("localhost/synthetic:1", "localhost/synthetix:1"))
    proc = run_restore(folder, tmp_path)
    assert proc.returncode == 1 and "manifest.json has sha256" in proc.stderr, proc.stderr


@pytest.mark.timeout(120)  # without the cap, the whole GiB is written to the temporary folder first
def test_a_decompression_bomb_stops_at_the_layer_size(tmp_path: Path) -> None:
    folder = restorable_set(tmp_path / "set", part=rle_bomb(1 << 30), size=1 << 20)
    proc = run_restore(folder, tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "decompresses to more than 1048576 bytes (stopped there)" in proc.stderr
    assert not list(tmp_path.glob("imgbuild-restore.*"))  # the temporary folder is removed


def test_a_damaged_layer_stream_is_named(tmp_path: Path) -> None:
    part = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(layer_tar()))
    part[-2] ^= 0x01  # the frame's content checksum
    folder = restorable_set(tmp_path / "set", part=bytes(part))
    proc = run_restore(folder, tmp_path)
    assert proc.returncode == 1 and "decompressing layer0001.tar failed" in proc.stderr, proc.stderr


def by_hand_lines(volume: Path) -> str:
    """README.txt's by-hand restore, as a user would copy it (the block's 4-space indent removed)."""
    text = (volume / layout.README_NAME).read_text().split("\n\n\n")[0]
    block = text.split("or do by hand what it does")[1].split("\n\n")[1]
    return "\n".join(line[4:] for line in block.splitlines())


def test_readme_by_hand_steps_paste_and_stop_before_loading_what_does_not_match(tmp_path: Path) -> None:
    """The lines parse as pasted; a changed config fails sha256sum -c and the load is not run.
    (tests/test_load_guards.py pastes them against a real engine.)"""
    folder = restorable_set(tmp_path / "set")
    lines = by_hand_lines(folder)
    assert "podman load" in lines and "mkdir /tmp/restore" not in lines
    assert subprocess.run(["sh", "-n"], input=lines, text=True).returncode == 0  # no syntax error
    config = folder / layout.config_path(1)
    config.write_bytes(config.read_bytes().replace(b"amd64", b"arm64"))
    bad = subprocess.run(["sh", "-c", lines.replace("podman load", "touch loaded")], cwd=folder.parent,
                         capture_output=True, text=True)
    assert "config01.json: FAILED" in bad.stdout and "layer0001.tar: OK" in bad.stdout, bad.stdout + bad.stderr
    assert not (folder.parent / "loaded").exists()  # the load line did not run


def test_readme_by_hand_steps_in_chinese_are_the_same_lines(tmp_path: Path) -> None:
    folder = restorable_set(tmp_path / "set")
    text = (folder / layout.README_NAME).read_text()
    english = by_hand_lines(folder).replace("# or: docker load", "")
    chinese = text.split("或者手工执行它所做的步骤")[1].split("\n\n")[1]
    chinese = "\n".join(line[4:] for line in chinese.splitlines()).replace("# 或：docker load", "")
    assert english == chinese
