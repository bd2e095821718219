"""load refuses to move tags silently and cross-checks a set's own descriptions before loading (real engines).

Reuses tests/test_load.py's set (two real images, made on the engine and then removed from it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from imgbuild import layout
from imgbuild.engines import Engine
from imgbuild.errors import LoadError
from imgbuild.load import LoadOptions, load_set
from imgbuild.manifest import SetManifest
from tests.support.restore_sets import copy_set, rewrite_manifest, set_image_id
from tests.test_load import _assert_nothing_loaded, _tags_of, engine_set, loaded  # noqa: F401  (fixtures)

pytestmark = pytest.mark.engine


def test_a_tag_on_another_image_needs_force(engine: Engine, engine_set: tuple[Path, SetManifest],
                                            loaded: None) -> None:
    folder, manifest = engine_set
    base, app = manifest.images
    load_set(engine, [folder], LoadOptions(images=(base.tags[0],)))
    holder = set_image_id(engine, base)
    assert holder is not None
    repository, tag = app.tags[0].rsplit(":", 1)
    engine.api.tag(holder, repository, tag)  # the app's tag now names the base image
    with pytest.raises(LoadError) as err:
        load_set(engine, [folder])
    text = str(err.value)
    assert app.tags[0] in text and holder in text and app.id in text and "--force" in (err.value.hint or "")
    assert set_image_id(engine, app) is None  # nothing loaded...
    assert app.tags[0] in _tags_of(engine, base)  # ...and the tag did not move
    result = load_set(engine, [folder], LoadOptions(force=True))
    assert [i.status for i in result.images] == ["present", "loaded"]
    assert app.tags[0] in _tags_of(engine, app) and app.tags[0] not in _tags_of(engine, base)


def _rewrite_docker_manifest(volumes: list[Path], change: Any) -> None:
    data = json.loads((volumes[0] / layout.DOCKER_MANIFEST_PATH).read_text())
    change(data)
    text = (json.dumps(data, indent=2) + "\n").encode()
    sha = hashlib.sha256(text).hexdigest()
    for volume in volumes:
        (volume / layout.DOCKER_MANIFEST_PATH).write_bytes(text)

    def follow(raw: dict[str, Any]) -> None:  # a careful forger also fixes the set manifest's entry
        for vol in raw["volumes"]:
            for entry in vol["files"]:
                if entry["path"] == layout.DOCKER_MANIFEST_PATH:
                    entry.update(size=len(text), sha256=sha)

    rewrite_manifest(volumes, follow)


def test_repo_tags_that_differ_from_the_set_manifest_are_refused(engine: Engine, engine_set: tuple[Path, SetManifest],
                                                                 loaded: None, tmp_path: Path) -> None:
    folder, manifest = engine_set
    volumes = copy_set(folder, tmp_path / "set")

    def retag(data: list[dict[str, Any]]) -> None:
        data[-1]["RepoTags"] = ["localhost/someone-else:1"]

    _rewrite_docker_manifest(volumes, retag)
    with pytest.raises(LoadError, match="someone-else") as err:
        load_set(engine, [tmp_path / "set"])
    assert layout.DOCKER_MANIFEST_PATH in str(err.value)
    _assert_nothing_loaded(engine, manifest)


def test_layers_that_differ_from_the_config_are_refused(engine: Engine, engine_set: tuple[Path, SetManifest],
                                                         loaded: None, tmp_path: Path) -> None:
    folder, manifest = engine_set
    volumes = copy_set(folder, tmp_path / "set")

    def drop_layer(raw: dict[str, Any]) -> None:
        raw["images"][-1]["layers"] = raw["images"][-1]["layers"][1:]

    rewrite_manifest(volumes, drop_layer)
    _rewrite_docker_manifest(volumes, lambda data: data[-1].update(Layers=data[-1]["Layers"][1:]))
    with pytest.raises(LoadError, match="rootfs|its config"):
        load_set(engine, [tmp_path / "set"])
    _assert_nothing_loaded(engine, manifest)
