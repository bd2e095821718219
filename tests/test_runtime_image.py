"""The TTS app image on real engines: imgbuild builds python-base + Containerfiles/tts-app.Containerfile with
the runtime, piper, the tiny test voice and a ref_data voice; the container then serves speech with no
network at all (an offline machine) and through a published port.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import requests

from imgbuild.build.build import BuildOptions, build_recipe
from imgbuild.engine.images import find_image
from imgbuild.recipe.loader import load_recipe

if os.environ.get("CI", "").lower() not in ("true", "1", "yes"):
    pytest.importorskip("imgbuild_runtime")  # scripts/setup.sh installs it; under CI its absence fails the run
from imgbuild_runtime.testvoice import write_test_voice  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# Runs inside the container (python3 of the image, no network): waits for /health, then asks for speech
# through both APIs and prints the answers' sizes and bodies as JSON on one line.
PROBE = r"""
import base64, json, time, urllib.request
def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request("http://127.0.0.1:8080" + path, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.read()
for _ in range(600):
    try:
        status, health = call("/health")
        break
    except Exception:
        time.sleep(0.1)
out = {"health": json.loads(health)}
for name, path, body in [("speech", "/v1/audio/speech", {"input": "Offline at last. It works.", "voice": "1paimon/e1", "response_format": "wav"}),
                         ("invoke", "/v1/invoke", {"text": "Hello there.", "speaker": "1paimon", "emotion": "e1"})]:
    status, data = call(path, body)
    out[name] = {"status": status, "wav": base64.b64encode(data).decode()}
print(json.dumps(out))
"""


def check_wav(data: bytes, rate: int) -> float:
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (rate, 1, 2)
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert samples.size > 0 and np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 50
    return samples.size / rate


def test_tts_image_serves_offline(engine, cleanup, unique_tag, bookworm_image, tmp_path: Path) -> None:
    voice = write_test_voice(tmp_path / "voice")
    ref = tmp_path / "ref_data" / "1paimon" / "e1"
    ref.mkdir(parents=True)
    with wave.open(str(ref / "2003_1.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((3000 * np.sin(np.arange(16000) / 4.0)).astype("<i2").tobytes())
    (ref / "2003_1.lab").write_text("我们这边也不是那么好骗的", encoding="utf-8")
    base, app = cleanup.image(unique_tag("tts-base")), cleanup.image(unique_tag("tts-app"))
    recipe = tmp_path / "tts.yaml"
    recipe.write_text(f"""\
apiVersion: imgbuild/v1
kind: Recipe
metadata: {{name: tts-test}}
base: {{tag: "{base}", from: "{bookworm_image}"}}
app:
  tag: "{app}"
  containerfile: {REPO}/Containerfiles/tts-app.Containerfile
  context:
    - {{src: {REPO}/runtime, dest: imgbuild-runtime}}
    - {{src: {voice.model.parent}, dest: voice}}
    - {{src: {tmp_path / "ref_data"}, dest: ref_data}}
  serve: {{port: 8080, health: {{path: /health, timeout: 120}}}}
""")
    result = build_recipe(load_recipe(recipe), engine, BuildOptions())
    env = find_image(engine, result.image("app").tag)["Config"]["Env"]
    assert "HF_HUB_OFFLINE=1" in env

    # No network at all: the request reaches the server from inside the container.
    offline = cleanup.container(engine.api.create_container(app, host_config=engine.api.create_host_config(
        network_mode="none"))["Id"])  # fmt: skip
    engine.api.start(offline)
    run = engine.api.exec_create(offline, ["python3", "-c", PROBE])
    stdout, stderr = engine.api.exec_start(run["Id"], demux=True)
    assert stdout, (stderr or b"").decode(errors="replace") + engine.api.logs(offline).decode(errors="replace")
    answer = json.loads(stdout.decode().strip().splitlines()[-1])
    health = answer["health"]
    assert (health["status"], health["engine"], health["model"]) == ("ok", "piper", voice.model.stem)
    assert health["threads"] >= 1 and health["reference_cache"]["encoded"] == 1
    for name in ("speech", "invoke"):
        assert answer[name]["status"] == 200
        assert check_wav(base64.b64decode(answer[name]["wav"]), voice.sample_rate) > 0.2

    # A published port, as load-and-run starts it.
    served = cleanup.container(engine.api.create_container(app, ports=[8080], host_config=engine.api.create_host_config(
        port_bindings={8080: ("127.0.0.1", None)}))["Id"])  # fmt: skip
    engine.api.start(served)
    port = engine.api.port(served, 8080)[0]["HostPort"]
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, engine.api.logs(served).decode(errors="replace")
        time.sleep(0.2)
    speech = requests.post(f"http://127.0.0.1:{port}/v1/audio/speech", json={"input": "Through the port."}, timeout=60)
    # OpenAI's default format, encoded by the image's own FFmpeg (PyAV) and decoded here.
    assert speech.status_code == 200 and speech.headers["content-type"] == "audio/mpeg"
    with av.open(io.BytesIO(speech.content)) as mp3:
        stream = mp3.streams.audio[0]
        samples = sum(frame.samples for frame in mp3.decode(stream))
        assert stream.codec_context.sample_rate == voice.sample_rate and samples / voice.sample_rate > 0.2
    bad = requests.post(f"http://127.0.0.1:{port}/v1/audio/speech", json={"input": ""}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
