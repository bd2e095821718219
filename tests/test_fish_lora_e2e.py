"""recipes/fish-speech-lora.yaml end to end on Podman (seed 002): a LoRA fine-tune of fish-speech 1.4 merged
during the build by fish-speech's own tools/llama/merge_lora.py, then archive onto several volumes -> verify
-> images removed -> load-and-run -> fish-speech 1.4's own API (tools/api.py, POST /v1/tts) answers a WAV.

The fish-speech 1.4.3 source is the unmodified fixture zip (IMGBUILD_FIXTURES, set by .ci/run). The base
model and the LoRA are stand-ins (tests/support/standins/fish14.py: the real architecture and file formats,
random values), the base served by the local Hub-protocol server as fishaudio/fish-speech-1.4. The merge is
proven on the image that came back from the volumes: its model.pth equals base + lora_B @ lora_A * alpha/r
on every layer the LoRA wraps and the base everywhere else, and neither the base model.pth nor the LoRA
checkpoint is left in the image.

Only Podman: the recipe, the merge and the API are the same on Docker Engine, and one run is minutes.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
import wave
import zipfile
from pathlib import Path

import pytest
import requests

from imgbuild.archive.archive import ArchiveOptions, archive
from imgbuild.build.build import BuildOptions, build_recipe
from imgbuild.discs.locate import locate_set
from imgbuild.engine.connect import Engine
from imgbuild.engine.images import find_image
from imgbuild.recipe.loader import load_recipe
from imgbuild.restore.load import LoadOptions
from imgbuild.restore.run import RunOptions, load_and_run
from imgbuild.restore.verify import verify_set
from tests.conftest import REPO_ROOT, Cleanup, remove_image
from tests.support.hub_repos import RepoStore
from tests.support.hub_server import HubServer
from tests.support.torchvenv import PRELUDE, fixture_zip, make_standin, podman_cleanup, torch_python, tts_base_env  # noqa: F401
from tests.test_torch_base import host_torch_wheels

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.extended]
RECIPE = REPO_ROOT / "recipes" / "fish-speech-lora.yaml"
FIXTURE_ZIP = "fish-speech-v1.4.3.zip"
APP_TAG = "localhost/fish-speech:1.4-lora-cpu"
MEDIA_SIZE = 200_000_000  # the set is about 1 GB compressed: several volumes
MERGED = "/opt/fish-speech/checkpoints/fish-speech-1.4-lora"
VOICE = "lora-voice"


def run_torch(python: str, code: str, *args: str) -> str:
    """Run `code` in the torch Python (after torchvenv.PRELUDE); its stdout."""
    done = subprocess.run([python, "-c", PRELUDE + code, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def write_voice(folder: Path) -> None:
    """references/VOICE/: one short WAV (a gliding tone) and its transcript, as fish-speech 1.4 reads them."""
    import numpy as np

    folder.mkdir(parents=True)
    t = np.arange(22050) / 22050
    with wave.open(str(folder / "hello.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes((8000 * np.sin(2 * np.pi * (180 + 120 * t) * t)).astype("<i2").tobytes())
    (folder / "hello.lab").write_text("Hello there.", encoding="utf-8")


def lora_recipe(folder: Path, unique_tag) -> Path:
    """recipes/fish-speech-lora.yaml with a unique app tag and repository paths made absolute."""
    text = RECIPE.read_text()
    for old, new in ((APP_TAG, unique_tag("fish-lora-app")), ("../Containerfiles/", f"{REPO_ROOT}/Containerfiles/")):
        assert old in text, f"recipes/fish-speech-lora.yaml no longer has {old!r}: update this test"
        text = text.replace(old, new)
    path = folder / "fish-speech-lora.yaml"
    path.write_text(text)
    return path


def read_from_image(engine, image: str, path: str) -> bytes | None:
    """One file of an image (None if absent), through a created, never started, container."""
    container = engine.api.create_container(image, command=["true"])
    try:
        stream, _ = engine.api.get_archive(container["Id"], path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            return tar.extractfile(member).read() if member and member.isfile() else b""
    except Exception as exc:  # docker.errors.NotFound: the path is not in the image
        if getattr(exc, "status_code", None) == 404:
            return None
        raise
    finally:
        engine.api.remove_container(container["Id"], force=True)


def test_lora_merged_fish_speech_14_end_to_end(podman_cleanup, unique_tag, tmp_path: Path, monkeypatch) -> None:
    engine, cleanup = podman_cleanup
    run_end_to_end(engine, cleanup, unique_tag, tmp_path, monkeypatch)


def run_end_to_end(engine: Engine, cleanup: Cleanup, unique_tag, tmp_path: Path, monkeypatch) -> None:
    source_zip = fixture_zip(FIXTURE_ZIP)
    python = torch_python("einops", "vector_quantize_pytorch", "yaml")
    times: dict[str, float] = {}
    mark = time.monotonic()

    # The stand-in base model and the LoRA fine-tuning checkpoint, made with the source's own decoder config.
    with zipfile.ZipFile(source_zip) as zf:
        zf.extractall(tmp_path / "src")
    (fish_src,) = (tmp_path / "src").iterdir()
    base, lora_dir = tmp_path / "fish-speech-1.4", tmp_path / "results"
    make_standin(python, "fish-speech-1.4", base, "--size", "tiny", "--fish-src", str(fish_src), "--lora",
                 str(lora_dir))
    (lora_ckpt,) = lora_dir.glob("*.ckpt")
    write_voice(tmp_path / "references" / VOICE)
    store = RepoStore()
    for path in sorted(base.iterdir()):
        store.add_file("fishaudio/fish-speech-1.4", path.name, source=path)
    times["stand-ins"] = time.monotonic() - mark

    recipe_path = lora_recipe(tmp_path, unique_tag)
    env = {"FISH_SPEECH_ZIP": str(source_zip), "FISH_LORA_CKPT": str(lora_ckpt),
           "FISH_REFERENCES": str(tmp_path / "references"), "TORCH_CPU_WHEELS": str(host_torch_wheels())}
    env.update(tts_base_env())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMGBUILD_CHECKPOINT_CACHE", str(tmp_path / "checkpoints"))
    with HubServer(store) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        loaded = load_recipe(recipe_path)
        # The shared CPU torch base (the same `base:` in every fish-speech and SparkTTS recipe) stays on the
        # engine for the other end-to-end tests; only the app image is this test's.
        cleanup.image(loaded.recipe.app.tag)
        mark = time.monotonic()
        built = build_recipe(loaded, engine, BuildOptions())
        times["build"] = time.monotonic() - mark
        assert hub.served("model.pth") > 0
    app, base_image = built.image("app"), built.image("base")
    assert find_image(engine, app.tag)["Config"]["Labels"]["org.imgbuild.role"] == "app"

    mark = time.monotonic()
    out = tmp_path / "set"
    archived = archive(engine, [str(recipe_path)], ArchiveOptions(out=out, media_size=MEDIA_SIZE,
                                                                  catalog=tmp_path / "catalog"))
    times["archive"] = time.monotonic() - mark
    assert len(archived.volumes) >= 3
    assert "fishaudio/fish-speech-1.4" in locate_set([out]).manifest.recipe.checkpoints_lock.text
    mark = time.monotonic()
    report = verify_set([out])
    times["verify"] = time.monotonic() - mark
    assert report.ok and report.volumes_checked == tuple(range(1, len(archived.volumes) + 1))

    # The load must be real: neither image is in the engine any more.
    for image in (app, base_image):
        remove_image(engine, image.tag)
        assert find_image(engine, image.id) is None

    mark = time.monotonic()
    result = load_and_run(engine, [out], LoadOptions(), RunOptions(port=0, detach=True))
    cleanup.container(result.container_id)
    times["load and healthy"] = time.monotonic() - mark
    times["healthy after start"] = result.seconds_to_healthy
    assert result.image_id == app.id and {i.status for i in result.load.images} == {"loaded"}

    # The merge happened, in the image that came back from the volumes.
    merged = tmp_path / "merged-model.pth"
    merged.write_bytes(read_from_image(engine, result.image_id, f"{MERGED}/model.pth"))
    check = json.loads(run_torch(python, (
        "import json, pathlib; from tests.support.standins.fish14 import lora_merge_report as report; "
        "print(json.dumps(report(*map(pathlib.Path, sys.argv[1:]))))"),
        str(base / "model.pth"), str(lora_ckpt), str(merged)))
    assert check["keys_equal"] and check["mismatched"] == [], check
    assert check["lora_tensors"] > 0 and check["unchanged"] == check["tensors"] - check["lora_tensors"]
    assert check["max_abs_delta"] > 0
    assert read_from_image(engine, result.image_id, "/opt/fish-speech/checkpoints/fish-speech-1.4/model.pth") is None
    assert read_from_image(engine, result.image_id, "/opt/fish-speech/lora") is None

    # fish-speech 1.4's API, with the voice from references/ (tools/post_api.py --reference_id sends this).
    body = {"text": "Hello from a merged LoRA.", "reference_id": VOICE, "format": "wav", "max_new_tokens": 24,
            "chunk_length": 200, "top_p": 0.7, "repetition_penalty": 1.2, "temperature": 0.7,
            "normalize": True, "streaming": False, "use_memory_cache": "never"}
    mark = time.monotonic()
    answer = requests.post(result.url + "v1/tts", json=body, timeout=600)
    times["one request"] = time.monotonic() - mark
    assert answer.status_code == 200, answer.text[-2000:]
    with wave.open(io.BytesIO(answer.content)) as w:
        assert (w.getframerate(), w.getnchannels()) == (44100, 1)  # the firefly decoder's sample rate
        assert w.getnframes() > 0
    logs = engine.api.logs(result.container_id).decode(errors="replace")
    assert "Loaded model: <All keys matched successfully>" in logs  # the decoder stand-in is complete

    sizes = {role: find_image(engine, ref)["Size"] for role, ref in (("base", base_image.id), ("app", app.id))}
    print(f"\nfish-speech-lora (tiny stand-ins): {json.dumps({k: round(v, 1) for k, v in times.items()})} s; "
          f"image sizes {sizes}; archived {archived.compressed_bytes} bytes on {len(archived.volumes)} volumes; "
          f"WAV {len(answer.content)} bytes; load average {os.getloadavg()[0]:.1f}")
