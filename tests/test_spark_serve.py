"""The runtime's `sparktts` engine with Spark-TTS's own code and a tiny stand-in SparkTTS-0.5B, on the host.

Runs in .venv-torch (scripts/setup_torch.sh: CPU torch, transformers and Spark-TTS's other dependencies),
with Spark-TTS's source from the fixture zip on PYTHONPATH, as the spark-tts image runs it. The server is a
real `python -m imgbuild_runtime --engine sparktts` process; the voice is cloned from a ref_data pair.
The stand-in's values are random: the audio is noise, its format and the caching are what is checked.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import wave
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.torchvenv import fixture_zip, make_standin, torch_python


def spark_source(dest: Path) -> Path:
    """Spark-TTS's source tree (cli/, sparktts/) extracted from the fixture zip into dest."""
    with zipfile.ZipFile(fixture_zip("Spark-TTS.zip")) as zf:
        zf.extractall(dest)
    return dest / "Spark-TTS"


def write_tone_voice(ref_data: Path, speaker: str, emotion: str, seconds: float = 3.0) -> Path:
    """ref_data/SPEAKER/EMOTION/ref.wav (a 16 kHz tone with a tremolo) + ref.lab."""
    folder = ref_data / speaker / emotion
    folder.mkdir(parents=True)
    t = np.arange(int(16000 * seconds)) / 16000
    samples = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    with wave.open(str(folder / "ref.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((samples * 32767).astype("<i2").tobytes())
    (folder / "ref.lab").write_text("a reference recording", encoding="utf-8")
    return folder


def check_wav(body: bytes, rate: int = 16000) -> float:
    """The seconds of audio in a mono 16-bit WAV at `rate`; fails on anything else or on empty audio."""
    with wave.open(io.BytesIO(body)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, rate)
        frames = w.getnframes()
    assert frames > 0, "the WAV holds no audio"
    return frames / rate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spark_server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("spark")
    python = torch_python("transformers", "omegaconf", "soxr")
    src = spark_source(tmp / "src")
    model = make_standin(python, "spark-tts", tmp / "Spark-TTS-0.5B", "--spark-src", str(src))
    ref_data = tmp / "ref_data"
    write_tone_voice(ref_data, "alice", "calm")
    port = _free_port()
    log_path = tmp / "server.log"
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        # --no-preencode: the first request encodes the reference, so the cache is seen working.
        proc = subprocess.Popen([python, "-m", "imgbuild_runtime", "--engine", "sparktts",
                                 "--model", str(model), "--ref-data", str(ref_data), "--no-preencode",
                                 "--no-disk-cache", "--host", "127.0.0.1", "--port", str(port), "--threads", "2"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, f"the server exited: {log_path.read_text()[-3000:]}"
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not healthy in 600 s: {log_path.read_text()[-3000:]}"
            time.sleep(1)
        yield base, log_path
    finally:
        proc.terminate()
        proc.wait(30)


def test_cloned_voice_speech_and_cached_reference(spark_server) -> None:
    base, log_path = spark_server
    log = log_path.read_text(errors="replace")
    assert "ready in" in log and "Missing tensor" not in log and "Unexpected tensor" not in log, log[-3000:]
    health = httpx.get(f"{base}/health").json()
    assert health["reference_cache"]["encoded"] == 0
    body = {"model": "tts-1", "input": "Hi.", "voice": "alice/calm", "response_format": "wav"}
    times = []
    for expected_encoded in (1, 1):
        started = time.monotonic()
        answer = httpx.post(f"{base}/v1/audio/speech", json=body, timeout=600)
        times.append(time.monotonic() - started)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-voice"] == "alice/calm"
        check_wav(answer.content)
        cache = httpx.get(f"{base}/health").json()["reference_cache"]
        assert cache["encoded"] == expected_encoded, cache
    assert cache["memory_hits"] >= 1, cache
    print(f"\nsparktts tiny stand-in: first request {times[0]:.2f} s (encodes the reference), "
          f"second {times[1]:.2f} s (cached); load average {os.getloadavg()[0]:.1f}", file=sys.stderr)

