"""load refuses to move tags silently and cross-checks a set's own descriptions before loading (real engines).

Reuses tests/test_load.py's set (two real images, made on the engine and then removed from it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from imgbuild.engine.connect import Engine
from imgbuild.foundation.errors import LoadError, Remedy
from imgbuild.restore.load import LoadOptions, load_set
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import SetManifest, parse_manifest
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
    assert app.tags[0] in text and holder in text and app.id in text and err.value.remedy is Remedy.MOVE_TAGS
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


def _path_without(tmp_path: Path, tool: str) -> str:
    """A PATH holding every command of /usr/bin and /bin except ``tool``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for source in (Path("/usr/local/bin"), Path("/usr/bin"), Path("/bin")):
        for entry in source.iterdir():
            if entry.name != tool and not (folder / entry.name).exists():
                (folder / entry.name).symlink_to(entry)
    return str(folder)


def test_restore_sh_compares_the_loaded_ids_even_without_sha256sum(
        engine: Engine, engine_set: tuple[Path, SetManifest], loaded: None, tmp_path: Path) -> None:
    """A flipped bit in a config (PATH= becomes PAUH= in the image's Env) on the volume restore.sh runs from:
    without sha256sum only the size is checked before loading, so the id comparison after it must fail."""
    import shutil
    import subprocess

    from tests.test_archive import _engine_command

    folder, manifest = engine_set
    volumes = copy_set(folder, tmp_path / "set")
    config = volumes[0] / manifest.images[-1].config.path
    data = config.read_bytes()
    assert b"PATH=" in data
    config.write_bytes(data.replace(b"PATH=", b"PAUH=", 1))
    if shutil.which(engine.kind) is None:
        pytest.fail(f"the {engine.kind} CLI is not installed")
    command, env = _engine_command(engine)
    env["PATH"] = _path_without(tmp_path, "sha256sum")
    proc = subprocess.run(["sh", str(volumes[0] / layout.RESTORE_NAME), "--engine", " ".join(command),
                           "--tmp", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    try:
        assert proc.returncode == 1, proc.stderr
        assert f"expected {manifest.images[-1].id.removeprefix('sha256:')}" in proc.stderr
        assert "the engine's images are not the set's" in proc.stderr
    finally:
        for tag in manifest.images[-1].tags:
            try:
                engine.api.remove_image(tag, force=True)
            except Exception:  # noqa: BLE001 - nothing to remove when the load was refused
                pass


def test_load_reports_device_nodes_and_refuse_devices_loads_nothing(engine: Engine, tmp_path: Path) -> None:
    """A consistent set whose layer holds /dev/mem (0666) and a setuid file: load says so, and with
    --refuse-devices stops before the layer reaches the engine."""
    import io
    import tarfile

    from tests.support.import_tar import import_tar
    from tests.support.restore_sets import make_set, remove_images, unique_prefix

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        device = tarfile.TarInfo("dev/mem")
        device.type, device.devmajor, device.devminor, device.mode = tarfile.CHRTYPE, 1, 1, 0o666
        tar.addfile(device)
        setuid = tarfile.TarInfo("usr/bin/helper")
        setuid.size, setuid.mode = 4, 0o4755
        tar.addfile(setuid, io.BytesIO(b"#!/\n"))
    tag = unique_prefix("devices") + ":1"
    import_tar(engine, buffer.getvalue(), tag)
    try:
        result = make_set(engine, [tag], tmp_path / "set", 4_000_000)
    finally:
        remove_images(engine, [tag])
    manifest = parse_manifest((result.volumes[0] / layout.MANIFEST_NAME).read_bytes(), "set")
    try:
        with pytest.raises(LoadError, match="holds a device node: dev/mem .*nothing was loaded"):
            load_set(engine, [tmp_path / "set"], LoadOptions(refuse_devices=True))
        _assert_nothing_loaded(engine, manifest)
        loaded_set = load_set(engine, [tmp_path / "set"])
        counts = dict(loaded_set.content.counts)
        assert counts == {"device": 1, "setuid": 1}, loaded_set.content
        assert "1 device node(s)" in loaded_set.content.describe()
    finally:
        remove_images(engine, [tag] + [i.id for i in manifest.images])


def test_readme_by_hand_steps_load_the_set_as_pasted(engine: Engine, engine_set: tuple[Path, SetManifest],
                                                     loaded: None) -> None:
    """README.txt's by-hand lines, pasted as written into sh in the set folder (only `podman` is pointed at
    this test's engine), load the images with the set's ids."""
    import subprocess

    from tests.test_archive import _engine_command
    from tests.test_restore_script import by_hand_lines

    folder, manifest = engine_set
    lines = by_hand_lines(sorted(p for p in folder.iterdir() if p.is_dir())[0])
    command, env = _engine_command(engine)
    proc = subprocess.run(["sh", "-c", lines.replace("podman load", " ".join(command) + " load")], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": OK") == 1 + len(manifest.images) + len(manifest.layers)
    assert all(set_image_id(engine, image) for image in manifest.images)
