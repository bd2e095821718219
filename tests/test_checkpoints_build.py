"""Checkpoints baked into a real app image: files at DEST, the lock as a file and as a label."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

from imgbuild.build.build import BuildOptions, build_recipe
from imgbuild.checkpoints.lockfile import CHECKPOINTS_LOCK_NAME, LOCK_LABEL, lock_path_for
from imgbuild.engine.images import find_image, image_labels
from imgbuild.recipe.loader import load_recipe
from tests.support.hub_repos import RepoStore
from tests.support.hub_server import HubServer


def _read(engine, container: str, path: str) -> bytes:
    stream, _ = engine.api.get_archive(container, path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.getmembers()[0]
        return tar.extractfile(member).read()


def test_app_image_carries_checkpoints_and_lock(engine, cleanup, unique_tag, bookworm_image, tmp_path: Path,
                                               monkeypatch) -> None:
    weights = os.urandom(400_000)
    store = RepoStore(lfs_threshold=100_000)
    store.add_file("org/voice", "model.pth", weights)
    store.add_file("org/voice", "config.json", b'{"n": 1}')
    # A bare base layer keeps the test about the app layer (no apt run in the base).
    (tmp_path / "bare.Containerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n")
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "lora.pth").write_bytes(b"merged weights")
    monkeypatch.setenv("IMGBUILD_CHECKPOINT_CACHE", str(tmp_path / "cache"))
    base, app = unique_tag("ckpt-base"), unique_tag("ckpt-app")
    cleanup.image(base)
    cleanup.image(app)
    with HubServer(store) as server:
        recipe = tmp_path / "voice.yaml"
        recipe.write_text(f"""\
apiVersion: imgbuild/v1
kind: Recipe
metadata: {{name: voice}}
mirrors: {{huggingface: "{server.endpoint}"}}
base: {{tag: "{base}", from: "{bookworm_image}", containerfile: bare.Containerfile}}
app:
  tag: "{app}"
  checkpoints:
    - {{repo: org/voice, dest: checkpoints/voice}}
    - {{path: merged, dest: checkpoints/lora}}
""")
        result = build_recipe(load_recipe(recipe), engine, BuildOptions(host_defaults=False))
    lock_bytes = lock_path_for(recipe).read_bytes()
    labels = image_labels(find_image(engine, result.image("app").tag))
    assert labels[LOCK_LABEL] == hashlib.sha256(lock_bytes).hexdigest()
    container = cleanup.container(engine.api.create_container(app, command=["true"])["Id"])
    assert _read(engine, container, f"/opt/app/{CHECKPOINTS_LOCK_NAME}") == lock_bytes
    assert _read(engine, container, "/opt/app/checkpoints/voice/model.pth") == weights
    assert _read(engine, container, "/opt/app/checkpoints/voice/config.json") == b'{"n": 1}'
    assert _read(engine, container, "/opt/app/checkpoints/lora/lora.pth") == b"merged weights"
