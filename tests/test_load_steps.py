"""load in steps (restore/load_steps.py): the plan, and real loads that leave no step image behind.

The engine tests load tests/test_load.py's set (a base image and an app image on it, made on the engine and
then removed from it) with a step size of one byte, so each layer is one step; and a set of three images,
two of them on the same base.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgbuild.cli import app
from imgbuild.engine.connect import Engine
from imgbuild.engine.docker_archive import ArchiveImage, ArchiveLayer, docker_archive
from imgbuild.engine.image_ids import image_store
from imgbuild.foundation.errors import ChecksumMismatch, LoadError
from imgbuild.foundation.progress import ProgressEvent
from imgbuild.restore.load import LoadOptions, load_set
from imgbuild.restore.load_steps import STEP_LABEL, _plan
from imgbuild.setformat.manifest import SetManifest
from tests.support.restore_sets import (
    build,
    copy_set,
    flip,
    make_set,
    manifest_of,
    parts_of,
    random_images,
    remove_images,
    set_image_id,
    unique_prefix,
)
from tests.test_load import _assert_nothing_loaded, _remove_set_images, _tags_of, engine_set, loaded  # noqa: F401  (fixtures)

EACH_LAYER = LoadOptions(step_bytes=1)


def _id(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def _config(diff_ids: list[str]) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}},
                      sort_keys=True).encode()


# ---------------------------------------------------------------- the plan (no engine)

def test_steps_follow_the_read_order_and_the_set_images_come_last() -> None:
    base, one, two = _id("base"), _id("one"), _id("two")
    images = [ArchiveImage(_config([base]), (base,)), ArchiveImage(_config([base, one]), (base, one)),
              ArchiveImage(_config([base, two]), (base, two))]
    steps = _plan("SET", images, [(base, 10), (one, 10), (two, 10)], step_bytes=10)
    assert steps is not None and [s.layers for s in steps] == [(base,), (one,), (two,)]
    assert [s.present for s in steps] == [(), (base,), (base, one)]
    assert [i.diff_ids for i in steps[0].images] == [(base,)] and [i.diff_ids for i in steps[1].images] == [(base, one)]
    assert steps[-1].images == tuple(images)  # the set's own images only in the last step
    step_config = json.loads(steps[1].images[0].config)
    assert step_config["config"]["Labels"] == {STEP_LABEL: "SET"} and "history" not in step_config
    assert step_config["rootfs"]["diff_ids"] == [base, one] and step_config["architecture"] == "amd64"
    # Layers are grouped until a group holds step_bytes; within a group only the top of a chain is an image.
    grouped = _plan("SET", images, [(base, 10), (one, 10), (two, 10)], step_bytes=20)
    assert grouped is not None and [s.layers for s in grouped] == [(base, one), (two,)]
    assert [i.diff_ids for i in grouped[0].images] == [(base, one)] and grouped[1].present == (base, one)
    assert _plan("SET", images, [(base, 10), (one, 10), (two, 10)], step_bytes=100) is None  # one step


def test_no_steps_for_a_layer_on_two_parents_and_a_layer_read_before_its_parent_waits_for_it() -> None:
    base, other, top, last = _id("base"), _id("other"), _id("top"), _id("last")
    twice = [ArchiveImage(_config([base, top]), (base, top)), ArchiveImage(_config([other, top]), (other, top))]
    assert _plan("SET", twice, [(base, 5), (other, 5), (top, 5)], step_bytes=1) is None
    app = [ArchiveImage(_config([base, top, last]), (base, top, last))]
    steps = _plan("SET", app, [(top, 5), (base, 5), (last, 5)], step_bytes=1)  # Docker 26's OCI save order
    assert steps is not None and [s.layers for s in steps] == [(top, base), (last,)]
    assert [i.diff_ids for i in steps[0].images] == [(base, top)] and steps[1].present == (top, base)
    assert _plan("SET", app, [(last, 5), (top, 5), (base, 5)], step_bytes=1) is None  # only one step possible


def test_layers_an_earlier_step_loaded_are_empty_members_and_the_tail_waits() -> None:
    sent, kept = os.urandom(3000), os.urandom(700)
    sent_id, kept_id = "sha256:" + hashlib.sha256(sent).hexdigest(), "sha256:" + hashlib.sha256(kept).hexdigest()
    waited: list[int] = []
    layers = {sent_id: ArchiveLayer(sent_id, 3000, lambda: [sent])}
    body = docker_archive([ArchiveImage(b"{}", (kept_id, sent_id))], layers, present=[kept_id],
                          before_tail=lambda: waited.append(1))
    chunks = []
    for chunk in body:
        chunks.append(chunk)
        assert waited or b"manifest.json" not in chunk
    data = b"".join(chunks)
    assert waited == [1] and len(data) == len(body)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getmember(f"{kept_id[7:]}/layer.tar").size == 0
        assert tar.extractfile(f"{sent_id[7:]}/layer.tar").read() == sent  # type: ignore[union-attr]
        assert tar.getnames()[-1] == "manifest.json"
    with pytest.raises(LoadError, match="both sent and present"):
        docker_archive([ArchiveImage(b"{}", (sent_id,))], layers, present=[sent_id])


# ---------------------------------------------------------------- real engines

def _step_images(engine: Engine) -> list[str]:
    return [i["Id"] for i in engine.api.images(all=True, filters={"label": STEP_LABEL})]


def _in_steps(engine: Engine) -> bool:
    return image_store(engine) != "containerd"  # there the whole archive goes out (load_steps.py)


@pytest.mark.newer_engines
def test_a_load_in_steps_gives_the_set_images_and_leaves_no_step_image(
        engine: Engine, engine_set: tuple[Path, SetManifest], loaded: None) -> None:
    folder, manifest = engine_set
    result = load_set(engine, [folder], EACH_LAYER)
    assert result.uploads == (len(manifest.layers) if _in_steps(engine) else 1)
    assert [i.status for i in result.images] == ["loaded", "loaded"]
    for image, done in zip(manifest.images, result.images):
        assert set_image_id(engine, image) == done.engine_id
        if _in_steps(engine):
            assert done.engine_id == image.id  # the set's config, byte for byte
        assert set(image.tags) <= set(_tags_of(engine, image))
    assert _step_images(engine) == []
    _remove_set_images(engine, manifest)
    whole = CliRunner().invoke(app, ["load", "--host", engine.host, "--whole-archive", "--json", str(folder)])
    assert whole.exit_code == 0, whole.output
    assert json.loads(whole.stdout)["uploads"] == 1
    assert [i["engine_id"] for i in json.loads(whole.stdout)["images"]] == [i.engine_id for i in result.images]


@pytest.mark.newer_engines
def test_a_bad_part_in_a_later_step_leaves_nothing(engine: Engine, engine_set: tuple[Path, SetManifest],
                                                   loaded: None, tmp_path: Path) -> None:
    folder, manifest = engine_set
    part = parts_of(copy_set(folder, tmp_path / "set"))[-1]
    flip(part, part.stat().st_size - 3)
    with pytest.raises((ChecksumMismatch, LoadError)) as info:
        load_set(engine, [tmp_path / "set"], EACH_LAYER)
    assert str(part) in str(info.value)
    _assert_nothing_loaded(engine, manifest)
    assert _step_images(engine) == []


@pytest.mark.newer_engines
def test_ctrl_c_in_the_middle_leaves_nothing(engine: Engine, engine_set: tuple[Path, SetManifest],
                                             loaded: None) -> None:
    folder, manifest = engine_set
    first_layer = manifest.layers[0].compressed_size
    sent: list[int] = []

    def interrupt(event: ProgressEvent) -> None:
        if event.done > first_layer and not sent:  # the first step is loading, the second being read
            sent.append(event.done)
            os.kill(os.getpid(), signal.SIGINT)
            # Reading goes on while the main thread takes the signal, as after a Ctrl-C; without the wait the
            # last step could be released within the interpreter's switch interval, before the main thread ran.
            time.sleep(0.5)

    with pytest.raises(KeyboardInterrupt):
        load_set(engine, [folder], EACH_LAYER, progress=interrupt)
    assert sent
    _assert_nothing_loaded(engine, manifest)
    assert _step_images(engine) == []


@pytest.fixture(scope="module")
def branching_set(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, SetManifest]]:
    """Three images: a base, and two apps on it (the base layer shared by all three)."""
    base, app = random_images(engine, unique_prefix("steps"))
    other = app.replace("-app:", "-other:")
    build(engine, other, f"FROM {base}\nCOPY other.bin /data/other.bin\n", {"other.bin": os.urandom(1_200_000)})
    out = tmp_path_factory.mktemp(f"steps-{engine.kind}") / "set"
    try:
        make_set(engine, [base, app, other], out, 2_700_000)
    finally:
        remove_images(engine, [other, app, base])
    manifest = manifest_of(min(p for p in out.iterdir() if p.is_dir()))
    yield out, manifest
    _remove_set_images(engine, manifest)


@pytest.mark.newer_engines
def test_images_sharing_a_base_load_in_steps(engine: Engine, branching_set: tuple[Path, SetManifest]) -> None:
    folder, manifest = branching_set
    _remove_set_images(engine, manifest)
    try:
        result = load_set(engine, [folder], EACH_LAYER)
        assert len(manifest.images) == 3 and len(manifest.layers) == 3
        assert result.uploads == (3 if _in_steps(engine) else 1)
        for image, done in zip(manifest.images, result.images):
            assert done.status == "loaded" and set_image_id(engine, image) == done.engine_id
            assert set(image.tags) <= set(_tags_of(engine, image))
        assert _step_images(engine) == []
    finally:
        _remove_set_images(engine, manifest)
