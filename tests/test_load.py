"""imgbuild load: the docker-archive stream, and loads into real engines that refuse anything damaged.

Sets are written by imgbuild's archive() from real images that are then removed, so every load is real.
The key property: a damaged or lying set leaves no image (and so no tag) in the engine.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgbuild.engine.connect import Engine
from imgbuild.engine.docker_archive import ArchiveImage, ArchiveLayer, docker_archive
from imgbuild.foundation.errors import ArchiveError, ChecksumMismatch, LoadError, ManifestError
from imgbuild.restore.load import LoadOptions, VolumeRequest, load_set
from imgbuild.setformat.manifest import Image, SetManifest
from tests.support.restore_sets import (
    copy_set,
    flip,
    image_exists,
    manifest_of,
    other_engine,
    parts_of,
    random_set,
    remove_images,
    rewrite_manifest,
    set_image_id,
)

# ---------------------------------------------------------------- the tar stream (no engine)

def _layer(data: bytes, chunks: int = 3) -> ArchiveLayer:
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    step = max(1, len(data) // chunks)
    return ArchiveLayer(diff_id, len(data), lambda: [data[i:i + step] for i in range(0, len(data), step)])


def test_docker_archive_is_a_tar_with_layers_first_and_manifest_last() -> None:
    shared, own = os.urandom(10_000), os.urandom(1536)
    ids = [_layer(shared).diff_id, _layer(own).diff_id]
    # The caller's order (on-disc order) wins over the images' order: the app's own layer comes first here.
    layers = {layer.diff_id: layer for layer in (_layer(own), _layer(shared))}
    images = [ArchiveImage(b'{"base":1}', (ids[0],)), ArchiveImage(b'{"app":1}', (ids[0], ids[1]))]
    archive = docker_archive(images, layers)
    data = b"".join(archive)
    assert len(data) == len(archive)  # announced as the HTTP body's Content-Length
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert tar.extractfile(f"{ids[0][7:]}/layer.tar").read() == shared  # type: ignore[union-attr]
        assert tar.extractfile(f"{ids[1][7:]}/layer.tar").read() == own  # type: ignore[union-attr]
    assert names[-1] == "manifest.json" and len(names) == 5  # each layer once, two configs
    assert names[:2] == [f"{ids[1][7:]}/layer.tar", f"{ids[0][7:]}/layer.tar"]
    assert [m["RepoTags"] for m in manifest] == [None, None]
    assert manifest[1]["Layers"] == [f"{ids[0][7:]}/layer.tar", f"{ids[1][7:]}/layer.tar"]
    assert manifest[1]["Config"] == hashlib.sha256(b'{"app":1}').hexdigest() + ".json"


@pytest.mark.parametrize("delta", [-1, 1])
def test_docker_archive_stops_when_a_layer_has_another_length(delta: int) -> None:
    data = os.urandom(2000)
    honest = _layer(data)
    lying = ArchiveLayer(honest.diff_id, len(data) + delta, honest.open)
    produced: list[bytes] = []
    with pytest.raises(LoadError, match="manifest says"):
        for chunk in docker_archive([ArchiveImage(b"{}", (honest.diff_id,))], {honest.diff_id: lying}):
            produced.append(chunk)
    assert b"manifest.json" not in b"".join(produced)


# ---------------------------------------------------------------- real engines

@pytest.fixture(scope="module")
def engine_set(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, SetManifest]]:
    """A set of two real images (made on this engine, then removed from it) in at least 3 volumes."""
    out = tmp_path_factory.mktemp(f"load-{engine.kind}") / "set"
    manifest = manifest_of(random_set(engine, "load", out)[0])
    assert not any(set_image_id(engine, image) for image in manifest.images)
    yield out, manifest
    _remove_set_images(engine, manifest)


def _remove_set_images(engine: Engine, manifest: SetManifest) -> None:
    found = [set_image_id(engine, image) for image in reversed(manifest.images)]
    remove_images(engine, [ref for ref in found if ref] + [image.id for image in reversed(manifest.images)])


@pytest.fixture
def loaded(engine: Engine, engine_set: tuple[Path, SetManifest]) -> Iterator[None]:
    """Removes, after the test, whatever of the set a test loaded."""
    _remove_set_images(engine, engine_set[1])
    yield
    _remove_set_images(engine, engine_set[1])


def _assert_nothing_loaded(engine: Engine, manifest: SetManifest) -> None:
    for image in manifest.images:
        assert set_image_id(engine, image) is None, f"{image.id} was loaded"
        for tag in image.tags:
            assert not image_exists(engine, tag), f"{tag} exists"


def _tags_of(engine: Engine, image: Image) -> list[str]:
    engine_id = set_image_id(engine, image)
    assert engine_id is not None, f"{image.id} is not in the engine"
    return list(engine.api.inspect_image(engine_id).get("RepoTags") or [])


@pytest.mark.newer_engines
def test_load_then_rerun_skips_present_images(engine: Engine, engine_set: tuple[Path, SetManifest],
                                              loaded: None) -> None:
    folder, manifest = engine_set
    first = load_set(engine, [folder])
    assert [i.status for i in first.images] == ["loaded", "loaded"]
    assert first.layers_sent == len(manifest.layers)
    assert first.bytes_read == sum(layer.compressed_size for layer in manifest.layers)
    assert first.bytes_sent == sum(layer.size for layer in manifest.layers)
    for image in manifest.images:
        assert set(image.tags) <= set(_tags_of(engine, image))
    again = load_set(engine, [folder])
    assert [i.status for i in again.images] == ["present", "present"] and again.bytes_read == 0


@pytest.mark.newer_engines
@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_a_flipped_byte_aborts_the_load_and_nothing_is_tagged(engine: Engine, engine_set: tuple[Path, SetManifest],
                                                              loaded: None, tmp_path: Path, which: str) -> None:
    folder, manifest = engine_set
    _, volumes = tmp_path / "set", copy_set(folder, tmp_path / "set")
    parts = parts_of(volumes)
    part = {"first": parts[0], "middle": parts[len(parts) // 2], "last": parts[-1]}[which]
    flip(part, part.stat().st_size - 3 if which == "last" else 100)
    with pytest.raises((ChecksumMismatch, LoadError)) as info:
        load_set(engine, [tmp_path / "set"])
    assert str(part) in str(info.value)
    _assert_nothing_loaded(engine, manifest)


def test_truncated_part_and_missing_volume_are_refused_before_loading(
        engine: Engine, engine_set: tuple[Path, SetManifest], loaded: None, tmp_path: Path) -> None:
    folder, manifest = engine_set
    volumes = copy_set(folder, tmp_path / "set")
    part = parts_of(volumes)[1]
    original = part.read_bytes()
    part.write_bytes(original[:-1])
    with pytest.raises(LoadError, match=str(part)):
        load_set(engine, [tmp_path / "set"])
    part.write_bytes(original)
    _assert_nothing_loaded(engine, manifest)

    moved = tmp_path / "elsewhere" / "DISC2"
    moved.parent.mkdir()
    volumes[1].rename(moved)
    with pytest.raises(LoadError, match=volumes[1].name):
        load_set(engine, [tmp_path / "set"])
    _assert_nothing_loaded(engine, manifest)

    asked: list[VolumeRequest] = []

    def ask(request: VolumeRequest) -> Path | None:
        asked.append(request)
        return tmp_path / "wrong" if len(asked) == 1 else moved

    (tmp_path / "wrong").mkdir()
    result = load_set(engine, [tmp_path / "set"], LoadOptions(ask_volume=ask))
    assert [r.number for r in asked] == [2, 2] and "is not that volume" in asked[1].reason
    assert volumes[1].name in asked[0].label
    assert [i.status for i in result.images] == ["loaded", "loaded"]


def test_volumes_may_sit_in_different_folders(engine: Engine, engine_set: tuple[Path, SetManifest],
                                              loaded: None, tmp_path: Path) -> None:
    folder, manifest = engine_set
    volumes = copy_set(folder, tmp_path / "set")
    places = []
    for index, volume in enumerate(volumes):
        place = tmp_path / f"drive{index}" / "MOUNTED"
        place.parent.mkdir()
        volume.rename(place)
        places.append(place)
    result = load_set(engine, list(reversed(places)))
    assert {i.id for i in result.images} == {i.id for i in manifest.images}



def test_hostile_manifests_are_refused_before_anything_is_loaded(
        engine: Engine, engine_set: tuple[Path, SetManifest], loaded: None, tmp_path: Path) -> None:
    folder, manifest = engine_set

    def fresh(name: str) -> list[Path]:
        return copy_set(folder, tmp_path / name)

    volumes = fresh("dotdot")

    def dotdot(raw: dict[str, Any]) -> None:
        raw["layers"][0]["parts"][0]["path"] = "../../etc/passwd"

    rewrite_manifest(volumes, dotdot, check=False)
    with pytest.raises(ManifestError, match="layers"):
        load_set(engine, [tmp_path / "dotdot"])

    volumes = fresh("symlink")
    part = parts_of(volumes)[0]
    target = tmp_path / "outside.bin"
    shutil.copyfile(part, target)
    part.unlink()
    part.symlink_to(target)
    with pytest.raises(ArchiveError, match="symbolic link"):
        load_set(engine, [tmp_path / "symlink"])

    volumes = fresh("lying-size")

    def lie(raw: dict[str, Any]) -> None:
        raw["layers"][-1]["size"] -= 1

    rewrite_manifest(volumes, lie)
    with pytest.raises(LoadError, match="manifest says"):
        load_set(engine, [tmp_path / "lying-size"])
    _assert_nothing_loaded(engine, manifest)


@pytest.mark.newer_engines
def test_a_set_made_on_one_engine_loads_into_the_other(engine: Engine, engine_set: tuple[Path, SetManifest]) -> None:
    folder, manifest = engine_set
    with other_engine(engine.kind) as other:
        if other is None:
            pytest.skip("the other engine is not configured")
        _remove_set_images(other, manifest)
        try:
            result = load_set(other, [folder])
            assert [i.status for i in result.images] == ["loaded", "loaded"]
            for image, loaded in zip(manifest.images, result.images):
                assert set_image_id(other, image) == loaded.engine_id
        finally:
            _remove_set_images(other, manifest)


def test_reader_threads_stop_when_the_consumer_gives_up(tmp_path: Path) -> None:
    """A load aborted mid-stream closes the reader and hasher threads instead of leaving them blocked."""
    import threading

    from imgbuild.discs.readahead import FileEnd, HashedReadAhead

    data = os.urandom(3 << 20)
    path = tmp_path / "part"
    path.write_bytes(data)
    reader = HashedReadAhead([path] * 50, chunk_size=1 << 20, depth=2)
    events = iter(reader)
    next(events), next(events)
    reader.close()
    assert not any(t.name.startswith("imgbuild-") for t in threading.enumerate())
    with HashedReadAhead([path, tmp_path / "missing"]) as complete:
        ends = [e for e in complete if isinstance(e, FileEnd)]
    assert ends[0].sha256 == hashlib.sha256(data).hexdigest() and ends[0].size == len(data)
    assert ends[1].error is not None and ends[1].sha256 is None


def test_cli_load_prints_json_and_exits_1_naming_a_bad_part(engine: Engine, engine_set: tuple[Path, SetManifest],
                                                          loaded: None, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from imgbuild.cli import app

    folder, manifest = engine_set
    volumes = copy_set(folder, tmp_path / "set")
    part = parts_of(volumes)[-1]
    flip(part, 7)
    refused = CliRunner().invoke(app, ["load", "--host", engine.host, str(tmp_path / "set")])
    assert refused.exit_code == 1 and str(part) in refused.output
    _assert_nothing_loaded(engine, manifest)
    result = CliRunner().invoke(app, ["load", "--host", engine.host, "--json", str(folder)])
    assert result.exit_code == 0, result.output
    as_json = json.loads(result.stdout)
    assert [i["status"] for i in as_json["images"]] == ["loaded", "loaded"] and as_json["engine"] == engine.kind
