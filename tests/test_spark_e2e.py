"""recipes/spark-tts-cpu.yaml end to end on Podman (seed 001): Spark-TTS's unmodified source (the fixture zip)
and a tiny stand-in SparkTTS-0.5B served by the local Hub-protocol server as SparkAudio/Spark-TTS-0.5B ->
download + build -> archive onto several volumes -> verify -> images removed -> load-and-run -> POST
/v1/audio/speech with a voice cloned from ref_data, twice -> WAVs at 16 kHz, and the reference was encoded
once (when the server started), never again for a request.

The stand-in's values are random (tests/support/standins/spark.py): the audio is noise; what is checked is
that the image built from the recipe loads the model with Spark-TTS's code and serves it. The base is the
shared TTS base with torch 2.13.0 CPU (this host's find-links wheel) and torchaudio 2.11.0 without its
compiled library (TORCHAUDIO_EXTENSION=drop): no torch 2.3.1 or 2.5.1 CPU wheel can be fetched here.
Only Podman: the recipe and the server are the same on Docker Engine, and one run takes minutes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import requests

from imgbuild.build.build import BuildOptions, build_recipe
from imgbuild.engine.images import find_image
from imgbuild.recipe.loader import load_recipe
from tests.conftest import REPO_ROOT
from tests.support.hub_repos import RepoStore
from tests.support.hub_server import HubServer
from tests.support.recipe_e2e import archive_and_reload
from tests.support.torchvenv import fixture_zip, make_standin, podman_cleanup, torch_python, tts_base_env  # noqa: F401
from tests.test_spark_serve import check_wav, spark_source, write_tone_voice
from tests.test_torch_base import host_torch_wheels

pytestmark = [pytest.mark.slow, pytest.mark.engine]
RECIPE = REPO_ROOT / "recipes" / "spark-tts-cpu.yaml"
REPO = "SparkAudio/Spark-TTS-0.5B"
APP_TAG = "localhost/spark-tts:0.5b-cpu"
MEDIA_SIZE = 200_000_000


def spark_recipe(folder: Path, unique_tag) -> Path:
    """recipes/spark-tts-cpu.yaml with a unique app tag and repository paths made absolute."""
    text = RECIPE.read_text()
    for old, new in ((APP_TAG, unique_tag("spark-app")), ("../Containerfiles/", f"{REPO_ROOT}/Containerfiles/"),
                     ("src: ../runtime", f"src: {REPO_ROOT}/runtime")):
        assert old in text, f"recipes/spark-tts-cpu.yaml no longer has {old!r}: update this test"
        text = text.replace(old, new)
    path = folder / "spark-tts-cpu.yaml"
    path.write_text(text)
    return path


def test_spark_tts_end_to_end(podman_cleanup, unique_tag, tmp_path: Path, monkeypatch) -> None:
    engine, cleanup = podman_cleanup
    times: dict[str, float] = {}
    mark = time.monotonic()
    python = torch_python("transformers", "omegaconf", "soxr")
    source_zip = fixture_zip("Spark-TTS.zip")
    model = make_standin(python, "spark-tts", tmp_path / "Spark-TTS-0.5B", "--spark-src",
                         str(spark_source(tmp_path / "src")))
    store = RepoStore()
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        store.add_file(REPO, path.relative_to(model).as_posix(), source=path)
    write_tone_voice(tmp_path / "ref_data", "alice", "calm")
    times["stand-in"] = time.monotonic() - mark

    recipe_path = spark_recipe(tmp_path, unique_tag)
    env = {"SPARK_TTS_ZIP": str(source_zip), "SPARK_REF_DATA": str(tmp_path / "ref_data"),
           "TORCH_CPU_WHEELS": str(host_torch_wheels())}
    env.update(tts_base_env())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMGBUILD_CHECKPOINT_CACHE", str(tmp_path / "checkpoints"))
    with HubServer(store) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        loaded = load_recipe(recipe_path)
        # The shared base stays on the engine for the other end-to-end tests; the app image is this test's.
        cleanup.image(loaded.recipe.app.tag)
        mark = time.monotonic()
        built = build_recipe(loaded, engine, BuildOptions())
        times["build"] = time.monotonic() - mark
        assert hub.served("LLM/model.safetensors") > 0
    app, base = built.image("app"), built.image("base")
    found = {role: find_image(engine, image.tag) for role, image in (("base", base), ("app", app))}
    assert all(found.values()), f"built images missing from the engine: {built.to_json()}"
    assert found["app"]["Id"].removeprefix("sha256:") == app.id.removeprefix("sha256:")
    sizes = {role: inspect["Size"] for role, inspect in found.items()}

    archived, result, lock_text = archive_and_reload(engine, cleanup, recipe_path, [app, base], tmp_path / "set",
                                                     MEDIA_SIZE, times)
    assert REPO in lock_text

    health = requests.get(result.health_url, timeout=10).json()
    assert (health["engine"], health["model"], health["sample_rate"]) == ("sparktts", "Spark-TTS-0.5B", 16000)
    encoded_at_start = health["reference_cache"]["encoded"]
    assert encoded_at_start == 1, health  # the one ref_data pair, encoded while the server started
    body = {"model": "tts-1", "input": "Hi.", "voice": "alice/calm", "response_format": "wav"}
    for n in (1, 2):
        mark = time.monotonic()
        answer = requests.post(result.url + "v1/audio/speech", json=body, timeout=600)
        times[f"request {n}"] = time.monotonic() - mark
        assert answer.status_code == 200, answer.text[-2000:]
        assert answer.headers["x-voice"] == "alice/calm"
        check_wav(answer.content)
    cache = requests.get(result.health_url, timeout=10).json()["reference_cache"]
    assert cache["encoded"] == encoded_at_start and cache["memory_hits"] >= 2, cache

    print(f"\nspark-tts-cpu (tiny stand-in): {json.dumps({k: round(v, 1) for k, v in times.items()})} s; "
          f"image sizes {sizes}; archived {archived.compressed_bytes} bytes on {len(archived.volumes)} volumes; "
          f"load average {os.getloadavg()[0]:.1f}")
