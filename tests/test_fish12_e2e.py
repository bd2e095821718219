"""recipes/fish-speech-1.2-sft-cpu.yaml end to end on Podman (seed 000): fish-speech v1.2's unmodified source
(the fixture zip) and the tiny stand-in fish-speech-1.2-sft served by the local Hub-protocol server as
fishaudio/fish-speech-1.2-sft, with reference voices spoken by espeak-ng -> `imgbuild download` + `build` ->
`archive` onto several volumes -> `verify` -> images removed -> `load-and-run` (imgbuild's TTS runtime with
its fishspeech engine, as the recipe serves it) -> healthy -> POST /v1/invoke with the body
tools/post_api.py sends for `--speaker S --emotion E` -> a WAV at the decoder's 44.1 kHz, the server log
naming that speaker's voice and its reference taken from the cache encoded at start; then the same with an
uploaded reference_audio (encoded once more). Then the same image serves fish-speech's own tools.api (the
recipe's documented alternative command): /v1/invoke by speaker, its log naming that reference.

The stand-in's values are random (tests/support/standins/fish12.py): the audio is noise; what is checked is
that the image built from the recipe loads the checkpoints with fish-speech's code and serves them. The base
is the shared TTS base with torch 2.13.0 CPU (this host's find-links wheel) and torchaudio 2.11.0 without its
compiled library (TORCHAUDIO_EXTENSION=drop): no torch 2.3.1 CPU wheel can be fetched here. Only Podman: the
recipe and the server are the same on Docker Engine, and one run takes minutes.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import wave
from pathlib import Path
from urllib.parse import unquote

import pytest
import requests
from typer.testing import CliRunner

from imgbuild.cli import app as cli
from imgbuild.engine.images import find_image
from tests.conftest import REPO_ROOT, Cleanup, remove_image
from tests.support.hub_repos import RepoStore
from tests.support.hub_server import HubServer
from tests.support.refvoices import VOICES, make_ref_data
from tests.support.standins.fish12 import DECODER_SAMPLE_RATE, REPO
from tests.support.torchvenv import fixture_zip, make_standin, podman_cleanup, torch_python, tts_base_env  # noqa: F401
from tests.test_torch_base import host_torch_wheels

pytestmark = [pytest.mark.slow, pytest.mark.engine]
RECIPE = REPO_ROOT / "recipes" / "fish-speech-1.2-sft-cpu.yaml"
APP_TAG = "localhost/fish-speech:1.2-sft-cpu"
MEDIA_SIZE = 400_000_000


def post_api_body(text: str, speaker: str | None = None, emotion: str | None = None,
                  reference_audio: Path | None = None, reference_text: str | None = None) -> dict:
    """What fish-speech 1.2's tools/post_api.py sends, with its defaults, for these arguments."""
    audio = base64.b64encode(reference_audio.read_bytes()).decode("utf-8") if reference_audio else None
    return {"text": text, "reference_text": reference_text, "reference_audio": audio, "max_new_tokens": 1024,
            "chunk_length": 100, "top_p": 0.7, "repetition_penalty": 1.2, "temperature": 0.7,
            "speaker": speaker, "emotion": emotion, "format": "wav", "streaming": False}


def wav_seconds(data: bytes, rate: int) -> float:
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", data[:200]
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels()) == (rate, 1)
        assert w.getnframes() > 0
        return w.getnframes() / rate


def fish_recipe(folder: Path, app_tag: str) -> Path:
    """recipes/fish-speech-1.2-sft-cpu.yaml with a unique app tag and repository paths made absolute."""
    text = RECIPE.read_text()
    for old, new in ((APP_TAG, app_tag), ("../Containerfiles/", f"{REPO_ROOT}/Containerfiles/"),
                     ("src: ../runtime", f"src: {REPO_ROOT}/runtime")):
        assert old in text, f"{RECIPE.name} no longer has {old!r}: update this test"
        text = text.replace(old, new)
    path = folder / RECIPE.name
    path.write_text(text)
    return path


def imgbuild(*args: str) -> dict:
    """The CLI as a user runs it, with --json; its result."""
    done = CliRunner().invoke(cli, [*args, "--json"])
    assert done.exit_code == 0, done.output[-3000:]
    return json.loads(done.stdout)


def test_fish_speech_12_end_to_end(podman_cleanup, unique_tag, tmp_path: Path, monkeypatch) -> None:
    engine, cleanup = podman_cleanup
    run_end_to_end(engine, cleanup, unique_tag, tmp_path, monkeypatch)


def run_end_to_end(engine, cleanup: Cleanup, unique_tag, tmp_path: Path, monkeypatch) -> None:
    times: dict[str, float] = {}
    mark = time.monotonic()
    source_zip = fixture_zip("fish-speech-v1.2.zip")
    model = make_standin(torch_python(), "fish-speech-1.2", tmp_path / "fish-speech-1.2-sft", "--size", "tiny")
    store = RepoStore()
    for path in sorted(p for p in model.iterdir() if p.is_file()):
        store.add_file(REPO, path.name, source=path)
    make_ref_data(tmp_path / "ref_data")
    times["stand-in and voices"] = time.monotonic() - mark

    recipe = fish_recipe(tmp_path, unique_tag("fish12-app"))
    env = {"FISH_SPEECH_ZIP": str(source_zip), "FISH_REF_DATA": str(tmp_path / "ref_data"),
           "TORCH_CPU_WHEELS": str(host_torch_wheels()), "IMGBUILD_ENGINE": "podman",
           "DOCKER_HOST": engine.host, "IMGBUILD_CHECKPOINT_CACHE": str(tmp_path / "checkpoints")}
    env.update(tts_base_env())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with HubServer(store) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        mark = time.monotonic()
        downloaded = imgbuild("download", str(recipe))
        times["download"] = time.monotonic() - mark
        assert hub.served("model.pth") > 0, downloaded
        mark = time.monotonic()
        built = imgbuild("build", str(recipe))
        times["build"] = time.monotonic() - mark
    images = {image["role"]: image for image in built["images"]}
    app, base = images["app"], images["base"]
    cleanup.image(app["tag"])  # the shared base stays on the engine for the other end-to-end tests
    times.update({f"build {role}": images[role]["seconds"] for role in ("base", "app")})
    sizes = {role: find_image(engine, images[role]["id"])["Size"] for role in ("base", "app")}

    mark = time.monotonic()
    out = tmp_path / "set"
    archived = imgbuild("archive", str(recipe), "--out", str(out), "--media-size", str(MEDIA_SIZE),
                        "--catalog", str(tmp_path / "catalog"))
    times["archive"] = time.monotonic() - mark
    assert len(archived["volumes"]) >= 2, archived
    mark = time.monotonic()
    verified = imgbuild("verify", str(out))
    times["verify"] = time.monotonic() - mark
    assert verified["ok"], verified

    # The load must be real: the app image is gone from the engine. The shared base loses its tag, but its
    # layers stay while another recipe's app image (the other end-to-end tests) is built on them.
    for image in (app, base):
        remove_image(engine, image["tag"])
    assert find_image(engine, app["id"]) is None and find_image(engine, base["tag"]) is None
    mark = time.monotonic()
    started = imgbuild("load-and-run", str(out), "--port", "0", "--detach")
    cleanup.container(started["container_id"])
    times["load and healthy"] = time.monotonic() - mark
    times["healthy after start"] = started["seconds_to_healthy"]
    assert started["image_id"] == app["id"]

    base_url = started["url"]
    cache = requests.get(base_url + "health", timeout=30).json()["reference_cache"]
    assert cache["encoded"] == len(VOICES), cache  # every ref_data voice encoded once, at start
    voice = next(v for v in VOICES if v.speaker == "测试说话")
    mark = time.monotonic()
    answer = requests.post(base_url + "v1/invoke", json=post_api_body("你好，世界。", voice.speaker, voice.emotion),
                           timeout=900)
    times["request (speaker)"] = time.monotonic() - mark
    assert answer.status_code == 200, answer.text[-2000:]
    audio_seconds = wav_seconds(answer.content, DECODER_SAMPLE_RATE)
    assert unquote(answer.headers["X-Voice"]) == f"{voice.speaker}/{voice.emotion}"
    logs = engine.api.logs(started["container_id"]).decode(errors="replace")
    assert f"voice={voice.speaker}/{voice.emotion} " in logs, logs[-3000:]
    after = requests.get(base_url + "health", timeout=30).json()["reference_cache"]
    assert after["encoded"] == cache["encoded"] and after["memory_hits"] > cache["memory_hits"], after

    uploaded = tmp_path / "ref_data" / VOICES[0].speaker / VOICES[0].emotion / f"{VOICES[0].name}.wav"
    mark = time.monotonic()
    # The same recording with another transcript is another reference (the cache keys on both).
    answer = requests.post(base_url + "v1/invoke", json=post_api_body(
        "Hello there.", reference_audio=uploaded, reference_text="Hello, this is an uploaded reference."),
        timeout=900)
    times["request (uploaded reference)"] = time.monotonic() - mark
    assert answer.status_code == 200, answer.text[-2000:]
    wav_seconds(answer.content, DECODER_SAMPLE_RATE)
    uploaded_cache = requests.get(base_url + "health", timeout=30).json()["reference_cache"]
    assert uploaded_cache["encoded"] == cache["encoded"] + 1, uploaded_cache  # a new reference: encoded once
    engine.api.remove_container(started["container_id"], force=True)

    # fish-speech's own API from the same image: the recipe's documented alternative serve command.
    mark = time.monotonic()
    times["tools.api request (speaker)"] = tools_api_by_speaker(engine, app["id"], voice)
    times["tools.api start and request"] = time.monotonic() - mark

    print(f"\nfish-speech-1.2-sft-cpu (tiny stand-in): {json.dumps({k: round(v, 1) for k, v in times.items()})} s; "
          f"image sizes {sizes}; archived {archived['compressed_bytes']} bytes on {len(archived['volumes'])} "
          f"volumes; first answer {audio_seconds:.1f} s of audio; load average {os.getloadavg()[0]:.1f}")


TOOLS_API = ["python3", "-m", "tools.api", "--listen", "0.0.0.0:8080", "--llama-checkpoint-path",
             "checkpoints/fish-speech-1.2-sft", "--decoder-checkpoint-path",
             "checkpoints/fish-speech-1.2-sft/firefly-gan-vq-fsq-4x1024-42hz-generator.pth",
             "--decoder-config-name", "firefly_gan_vq", "--device", "cpu"]


def tools_api_by_speaker(engine, image_id: str, voice) -> float:
    """Start ``image_id`` with fish-speech's tools.api (the command the recipe documents), wait for its POST
    /v1/health, ask /v1/invoke for ``voice`` as post_api.py does; the request's seconds."""
    assert " ".join(TOOLS_API[3:]) in RECIPE.read_text().replace("\n#    ", " ").replace(",", ""), \
        "the recipe no longer documents this tools.api command"
    container = engine.client.containers.run(image_id, TOOLS_API, detach=True,
                                             ports={"8080/tcp": ("127.0.0.1", None)})
    try:
        container.reload()
        port = container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
        url = f"http://127.0.0.1:{port}/v1/"
        deadline = time.monotonic() + 900
        while True:
            try:
                if requests.post(url + "health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, container.logs().decode(errors="replace")[-3000:]
            time.sleep(2)
        mark = time.monotonic()
        answer = requests.post(url + "invoke", json=post_api_body("你好。", voice.speaker, voice.emotion), timeout=900)
        seconds = time.monotonic() - mark
        assert answer.status_code == 200, answer.text[-2000:]
        wav_seconds(answer.content, DECODER_SAMPLE_RATE)
        logs = container.logs().decode(errors="replace")
        assert f"ref_path: ref_data/{voice.speaker}/{voice.emotion}/{voice.name}.wav" in logs, logs[-3000:]
        assert f"ref_text: {voice.text}" in logs
        return seconds
    finally:
        container.remove(force=True)
