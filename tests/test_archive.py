"""imgbuild archive against real engines: volumes, sha256sum -c, deduplication, restore.sh, kill and rerun.

The unit tests at the top check the volume writer and the save-stream reader on synthetic data.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from imgbuild.archive.archive import ArchiveOptions, archive
from imgbuild.archive.layer_pipeline import LayerArchiver, LayerCompression
from imgbuild.archive.save_stream import read_save_stream
from imgbuild.archive.volume_writer import VolumeWriter, file_cost
from imgbuild.engine.connect import Engine
from imgbuild.foundation.atomicfile import disk_errors
from imgbuild.foundation.errors import DiskFull
from imgbuild.foundation.progress import no_progress
from imgbuild.restore.verify import VerifyOptions, verify_set
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import parse_manifest
from tests.support.restore_sets import set_image_id

MEDIA_SIZE = 25_000_000  # the bookworm base layer compresses to about 66 MB: at least 3 volumes


# ---------------------------------------------------------------- unit tests (no engine)

def test_volume_writer_splits_parts_and_fills_volumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "MAX_PART_SIZE", 3 * 1024 * 1024)
    capacity = 8 * 1024 * 1024
    writer = VolumeWriter(tmp_path, "0123456789abcdef", capacity)
    data = os.urandom(20 * 1024 * 1024)
    sink = writer.layer(1)
    for start in range(0, len(data), 700_000):
        sink.write(data[start:start + 700_000])
    parts, size, sha = sink.commit()
    assert size == len(data) and sha == hashlib.sha256(data).hexdigest()
    joined = b"".join((writer.staging_folder(p.volume) / p.path).read_bytes() for p in parts)
    assert joined == data
    assert all(p.size <= 3 * 1024 * 1024 for p in parts)
    for volume in writer.volumes:
        assert volume.used <= writer.usable <= capacity
        assert not list(volume.staging.rglob("*.partial"))
    assert len(writer.volumes) >= 3

    # A duplicate layer is rolled back as if it had never been written.
    before = [(v.number, v.used, len(v.files)) for v in writer.volumes]
    duplicate = writer.layer(2)
    duplicate.write(os.urandom(9 * 1024 * 1024))
    duplicate.abort()
    assert [(v.number, v.used, len(v.files)) for v in writer.volumes] == before
    assert not list(tmp_path.rglob("layer0002*"))


def test_full_disk_is_reported_with_the_path() -> None:
    with pytest.raises(DiskFull) as info:
        with disk_errors(Path("/dev/full")), open("/dev/full", "wb", buffering=0) as fh:
            fh.write(b"x" * 4096)
    assert "/dev/full" in str(info.value)


def test_file_cost_counts_sectors_and_directory_entry() -> None:
    assert file_cost(0) == 2048 and file_cost(1) == 4096 and file_cost(2048) == 4096


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes = b"", link: str | None = None) -> None:
    info = tarfile.TarInfo(name)
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
    else:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if link is None else None)


def test_save_stream_reader_follows_podman_style_links() -> None:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as inner:
        _tar_member(inner, "hello.txt", b"hello")
    layer_bytes = layer.getvalue()
    diff = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff}"]}}).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as outer:
        _tar_member(outer, f"{diff}.tar", layer_bytes)
        _tar_member(outer, "abc.json", config)
        _tar_member(outer, "v1id/layer.tar", link=f"../{diff}.tar")
        _tar_member(outer, "manifest.json", json.dumps([{"Config": "abc.json", "Layers": ["v1id/layer.tar"]}]).encode())
    seen = []

    def on_layer(name: str, size: int, chunks: object) -> str:
        body = b"".join(chunks)  # type: ignore[arg-type]
        seen.append((name, size))
        return "sha256:" + hashlib.sha256(body).hexdigest()

    data = buffer.getvalue()
    saved = read_save_stream((data[i:i + 1000] for i in range(0, len(data), 1000)), on_layer)
    assert seen == [(f"{diff}.tar", len(layer_bytes))]
    assert saved.layer_diff_id("v1id/layer.tar") == f"sha256:{diff}"
    assert saved.config_bytes("abc.json") == config


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_save_stream_reader_reads_long_names(fmt: int) -> None:
    long_dir = "d" * 120
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as outer:
        _tar_member(outer, f"{long_dir}/layer.tar", b"\0" * 1024)
        _tar_member(outer, f"{long_dir}/link.tar", link="layer.tar")
        _tar_member(outer, "manifest.json", b"[]")
    saved = read_save_stream([buffer.getvalue()], lambda name, size, chunks: "sha256:" + hashlib.sha256(
        b"".join(chunks)).hexdigest())
    assert saved.layer_diff_id(f"{long_dir}/link.tar") == "sha256:" + hashlib.sha256(b"\0" * 1024).hexdigest()
    assert saved.small_files["manifest.json"] == b"[]"


def test_each_layer_is_one_zstd_frame_in_the_mode_that_costs_it_least(tmp_path: Path) -> None:
    """Random bytes (as float weights: barely compressible) go through zstd's one-thread stream, code through
    its worker threads; either way a layer's parts join into one zstd frame of the layer's bytes."""
    compression = LayerCompression(level=3, long=False, threads=-1, cpus=2)
    chosen = []
    pick = compression.for_layer

    def spy(first: memoryview) -> zstandard.ZstdCompressor:
        chosen.append(pick(first))
        return chosen[-1]

    compression.for_layer = spy  # type: ignore[method-assign]
    writer = VolumeWriter(tmp_path, "0123456789abcdef", 64 * 1024 * 1024)
    archiver = LayerArchiver(writer, compression, no_progress, "test", None)
    layers = {"weights.tar": os.urandom(3_000_000),
              "code.tar": b"".join(f"def f{n}(x):\n    return x * {n}\n".encode() for n in range(120_000))}
    try:
        for name, data in layers.items():
            archiver(name, len(data), (memoryview(data)[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)))
    finally:
        archiver.close()
    assert compression.single is not compression.threaded
    assert chosen == [compression.single, compression.threaded]
    for layer, data in zip(archiver.layers, layers.values()):
        assert layer.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
        stream = b"".join((writer.volumes[part.volume - 1].staging / part.path).read_bytes() for part in layer.parts)
        assert zstandard.get_frame_parameters(stream).content_size == len(data)
        reader = zstandard.ZstdDecompressor().decompressobj()
        assert reader.decompress(stream) == data
        assert reader.eof and not reader.unused_data  # one frame, nothing after it
    assert len(layers["code.tar"]) > 3 * archiver.layers[1].compressed_size


def test_one_zstd_mode_serves_every_layer_when_choosing_would_not_pay() -> None:
    """One thread when asked (threads=0); worker threads for all on more than two CPUs (there a weights
    layer in one thread would hold the pipeline back) and with --long (each mode would hold its window)."""
    text, noise = memoryview(b"text " * 100_000), memoryview(os.urandom(100_000))
    for compression in (LayerCompression(level=3, long=False, threads=0),
                        LayerCompression(level=3, long=False, threads=-1, cpus=8),
                        LayerCompression(level=3, long=False, threads=4),
                        LayerCompression(level=3, long=True, threads=-1, cpus=2)):
        assert compression.single is compression.threaded
        assert compression.for_layer(text) is compression.for_layer(noise) is compression.threaded
    two = LayerCompression(level=3, long=False, threads=2)
    assert two.for_layer(noise) is two.single is not two.threaded


# ---------------------------------------------------------------- real engines

def _build(engine: Engine, base: str, tag: str, content: bytes) -> str:
    """A small image FROM base adding one file (COPY needs no container runtime)."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        _tar_member(tar, "Containerfile", f"FROM {base}\nCOPY payload.bin /payload.bin\n".encode())
        _tar_member(tar, "payload.bin", content)
    context.seek(0)
    for _ in engine.api.build(fileobj=context, custom_context=True, dockerfile="Containerfile", tag=tag,
                              rm=True, decode=True):
        pass
    return str(engine.api.inspect_image(tag)["Id"])


@pytest.fixture
def two_apps(engine: Engine, bookworm_image: str, unique_tag, cleanup) -> list[tuple[str, str]]:
    """Two images sharing the bookworm base layer: [(tag, id), (tag, id)]."""
    apps = []
    for name in ("arch-a", "arch-b"):
        tag = cleanup.image(unique_tag(name))
        apps.append((tag, _build(engine, bookworm_image, tag, os.urandom(300_000))))
    return apps


def _check_volumes(volumes: list[Path], capacity: int) -> None:
    for volume in volumes:
        subprocess.run(["sha256sum", "-c", "--quiet", layout.SUMS_NAME], cwd=volume, check=True)
        files = [p for p in volume.rglob("*") if p.is_file()]
        assert all(p.stat().st_size <= layout.MAX_PART_SIZE for p in files)
        assert sum(file_cost(p.stat().st_size) for p in files) <= capacity
        assert not [p for p in volume.rglob("*") if p.name.endswith(layout.PARTIAL_SUFFIX)]


def _engine_command(engine: Engine) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if engine.kind == "podman":
        return ["podman", "--url", engine.host], env
    env["DOCKER_HOST"] = engine.host
    return ["docker"], env


@pytest.mark.newer_engines
def test_archive_dedups_verifies_and_restores_without_imgbuild(engine: Engine, two_apps, tmp_path: Path) -> None:
    out = tmp_path / "out"
    options = ArchiveOptions(out=out, media=None, media_size=MEDIA_SIZE, catalog=tmp_path / "catalog")
    result = archive(engine, [tag for tag, _ in two_apps], options)

    assert len(result.volumes) >= 3
    _check_volumes(result.volumes, MEDIA_SIZE)
    manifest_bytes = (result.volumes[0] / layout.MANIFEST_NAME).read_bytes()
    assert all((v / layout.MANIFEST_NAME).read_bytes() == manifest_bytes for v in result.volumes)
    assert result.catalog.read_bytes() == manifest_bytes
    manifest = parse_manifest(manifest_bytes, "test")
    # the engine's ids: the set's own (config digests), except in Docker's containerd image store
    assert [set_image_id(engine, i) for i in manifest.images] == [image_id for _, image_id in two_apps]
    # The base layer both images share is stored once.
    assert manifest.images[0].layers[0] == manifest.images[1].layers[0]
    all_layers = {d for image in manifest.images for d in image.layers}
    assert len(manifest.layers) == len(all_layers)
    assert len([p for v in result.volumes for p in (v / "blobs").iterdir()]) == sum(
        len(layer.parts) for layer in manifest.layers)

    # Rerunning a complete set writes nothing.
    again = archive(engine, [tag for tag, _ in two_apps], options)
    assert again.already_complete and again.set_id == result.set_id

    # restore.sh with only standard tools gives the same image ids.
    if shutil.which("zstd") is None or shutil.which(f"{engine.kind}") is None:
        pytest.skip(f"zstd or the {engine.kind} CLI is not installed")
    for tag, image_id in two_apps:
        engine.api.remove_image(tag, force=True)
    command, env = _engine_command(engine)
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    restore = result.volumes[1] / layout.RESTORE_NAME
    subprocess.run(["sh", str(restore), "--engine", " ".join(command), "--tmp", str(tmp_path)],
                   check=True, env=env, cwd=tmp_path, capture_output=True)
    for (tag, _), image in zip(two_apps, manifest.images):
        assert engine.api.inspect_image(tag)["Id"] == set_image_id(engine, image)


def _recipe(folder: Path, base: str, app: str) -> Path:
    """A recipe naming two existing images as its base and app layers, with a checkpoint lock beside it."""
    recipe = folder / "arch.yaml"
    recipe.write_text(f"""apiVersion: imgbuild/v1
kind: Recipe
metadata:
  name: arch-test
base:
  tag: {base}
  bootstrap:
    suite: bookworm
app:
  tag: {app}
  serve:
    port: 8080
""")
    (folder / "arch.lock.json").write_text('{"version": 1, "checkpoints": []}\n')
    return recipe


def test_killed_archive_leaves_nothing_final_and_a_rerun_completes(engine: Engine, two_apps, tmp_path: Path) -> None:
    """The CLI on a recipe is killed mid-layer; the same command then completes the set."""
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, two_apps[0][0], two_apps[1][0])
    command = [sys.executable, "-m", "imgbuild", "archive", str(recipe), "--out", str(out),
               "--media-size", str(MEDIA_SIZE), "--catalog", str(tmp_path / "catalog"),
               "--engine", engine.kind, "--host", engine.host, "--json"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        # Kill once the second volume has data: mid-layer, with a finished part behind it.
        if list(out.glob(f"*-vol002{layout.PARTIAL_SUFFIX}/blobs/*")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "archive finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not [p for p in out.iterdir() if layout.parse_volume_folder(p.name)], "a volume got its final name"
    assert not list(out.rglob(layout.MANIFEST_NAME)) and not list(out.rglob(layout.SUMS_NAME))

    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert not result["already_complete"]
    volumes = [Path(v) for v in result["volumes"]]
    assert len(volumes) >= 3
    assert sorted(out.iterdir()) == sorted(volumes)  # the leftovers of the killed run are gone
    _check_volumes(volumes, MEDIA_SIZE)
    report = verify_set([out], VerifyOptions(deep=True, catalog=tmp_path / "catalog" / f"{result['set_id']}.json"))
    assert report.ok, report.to_json()
    manifest = parse_manifest((volumes[-1] / layout.MANIFEST_NAME).read_bytes(), "rerun")
    assert [(i.id, i.role) for i in manifest.images] == [(two_apps[0][1], "base"), (two_apps[1][1], "app")]
    assert manifest.recipe is not None and manifest.recipe.recipe.text == recipe.read_text()
    assert manifest.recipe.checkpoints_lock is not None and manifest.name == "arch-test"
