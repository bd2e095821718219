"""The runtime TTS server's HTTP contract, in-process: a real uvicorn server on 127.0.0.1 in a thread, the
real piper-tts + onnxruntime path on the tiny generated test voice, and every kind of bad input.

Engines that must be slow or fail on cue (queue full, timeouts, loading, streaming order) are the real
PiperEngine with a gate around it, not stand-ins.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

for _module in ("fastapi", "uvicorn", "httpx", "piper", "onnxruntime", "onnx", "soundfile", "imgbuild_runtime"):
    if os.environ.get("CI", "").lower() not in ("true", "1", "yes"):
        pytest.importorskip(_module)  # under CI a missing runtime dependency fails the run instead

import httpx  # noqa: E402
import soundfile  # noqa: E402

from imgbuild_runtime.app import create_app  # noqa: E402
from imgbuild_runtime.state import ServerConfig  # noqa: E402
from imgbuild_runtime.testvoice import DEFAULT_SAMPLE_RATE, write_test_voice  # noqa: E402
from tests.support.tts_server import GatedPiper, make_ref_data, serve  # noqa: E402

pytestmark = pytest.mark.network_local
RATE = DEFAULT_SAMPLE_RATE
MAX_CHARS = 300
THREE_SENTENCES = "The first sentence is here. The second one follows it. And this is the third."


# ---------------------------------------------------------------- helpers


def wav_samples(data: bytes, rate: int = RATE) -> np.ndarray:
    """Checks a complete WAV (RIFF header, PCM16 mono, sample rate) and returns its samples."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and data[12:16] == b"fmt "
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (rate, 1, 2)
        assert w.getnframes() > 0
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert samples.size == (len(data) - 44) // 2
    return samples


def assert_speech(samples: np.ndarray, rate: int = RATE) -> float:
    duration = samples.size / rate
    assert duration > 0.1
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    assert rms > 100, f"audio is (nearly) silent: rms {rms}"
    return duration


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()["error"]
    assert body["message"]
    return body


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def voice_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tts")
    voice = write_test_voice(root / "voice")
    return voice.model, make_ref_data(root / "ref_data")


@pytest.fixture(scope="module")
def base_config(voice_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> ServerConfig:
    model, ref_data = voice_files
    return ServerConfig(
        model=model,
        ref_data=ref_data,
        cache_dir=tmp_path_factory.mktemp("refcache"),
        threads=1,
        max_chars=MAX_CHARS,
        max_pending=4,
        request_timeout=60,
        max_body_bytes=256 * 1024,
    )


@pytest.fixture(scope="module")
def client(base_config: ServerConfig) -> Iterator[httpx.Client]:
    engine = GatedPiper(base_config.model, base_config.threads, fail_on="EXPLODE")
    with serve(base_config, engine) as c:
        yield c


def speech(client: httpx.Client, **body) -> httpx.Response:
    """wav unless the test says otherwise (the API's own default is mp3, tested in test_runtime_openai.py)."""
    return client.post("/v1/audio/speech", json={"input": "Hello there.", "response_format": "wav", **body})


# ---------------------------------------------------------------- contract


def test_health_models_voices(client: httpx.Client, base_config: ServerConfig) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert (health["engine"], health["model"], health["threads"]) == ("piper", "en_US-imgbuild_test-tiny", 1)
    assert health["sample_rate"] == RATE and health["precision"] == "fp32"
    assert client.post("/v1/health").json()["status"] == "ok"  # fish-speech's route

    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["en_US-imgbuild_test-tiny"]

    voices = client.get("/v1/audio/voices").json()
    assert voices["voices"] == ["1paimon", "1paimon/e1", "2r", "2r/e1", "2r/happy", "default"]
    details = {d["name"]: d for d in voices["details"]}
    # .wav paired with the .lab of the same name, all pairs of a folder, in name order
    happy = details["2r/happy"]["references"]
    assert [Path(r["audio"]).name for r in happy] == ["a_take.wav", "b_take.wav"]
    assert [r["text"] for r in happy] == ["2r/happy/a_take.lab", "2r/happy/b_take.lab"]  # no server paths
    assert str(base_config.ref_data) not in json.dumps(voices)
    assert voices["aliases"]["alloy"] == "default" and set(voices["aliases"]) >= {"echo", "nova", "shimmer"}
    assert details["2r"]["emotion"] == "e1"  # a bare speaker is its first emotion (no `default` folder)
    problems = " ".join(voices["problems"])
    assert "x.wav" in problems and "c_orphan.lab" in problems and "3lonely" in problems


def test_speech_wav_is_real_audio_and_follows_text_and_speed(client: httpx.Client) -> None:
    short = speech(client, input="Hi.")
    assert short.status_code == 200 and short.headers["content-type"] == "audio/wav"
    long = speech(client, input=THREE_SENTENCES)
    short_s, long_s = assert_speech(wav_samples(short.content)), assert_speech(wav_samples(long.content))
    assert long_s > 3 * short_s
    fast = assert_speech(wav_samples(speech(client, input=THREE_SENTENCES, speed=2.0).content))
    assert fast == pytest.approx(long_s / 2, rel=0.05)
    again = speech(client, input=THREE_SENTENCES)
    assert again.content == long.content  # deterministic voice, no hidden state between requests


def test_speech_pcm_and_flac_match_wav(client: httpx.Client) -> None:
    wav = wav_samples(speech(client, input=THREE_SENTENCES, model="tts-1").content)
    pcm = speech(client, input=THREE_SENTENCES, response_format="pcm")
    assert pcm.headers["content-type"] == "audio/pcm"
    assert np.array_equal(np.frombuffer(pcm.content, dtype="<i2"), wav)
    flac = speech(client, input=THREE_SENTENCES, response_format="flac")
    assert flac.content[:4] == b"fLaC"
    decoded, rate = soundfile.read(io.BytesIO(flac.content), dtype="int16")
    assert rate == RATE and np.array_equal(decoded, wav)


def test_reference_voice_level_follows_its_recording(client: httpx.Client) -> None:
    quiet = wav_samples(speech(client, voice="1paimon/e1").content)  # reference rms ~0.035
    loud = wav_samples(speech(client, voice="2r").content)  # reference rms ~0.21
    assert speech(client, voice="1paimon").content == speech(client, voice="1paimon/e1").content
    assert np.abs(loud).mean() > 3 * np.abs(quiet).mean()


def test_stream_sends_first_sentence_before_the_rest_is_made(base_config: ServerConfig) -> None:
    engine = GatedPiper(base_config.model, 1)
    with serve(base_config, engine) as c:
        reference = speech(c, input=THREE_SENTENCES, response_format="pcm")
        engine.chunk_gate.clear()
        engine.first_sent.clear()
        body = {"input": THREE_SENTENCES, "stream": True, "response_format": "wav"}
        with c.stream("POST", "/v1/audio/speech", json=body) as response:
            assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
            stream = response.iter_raw()
            first = next(stream)
            # The engine is held after sentence one until the gate opens below: these bytes were sent
            # before the rest existed.
            assert engine.first_sent.wait(10) and not engine.chunk_gate.is_set()
            assert first[:4] == b"RIFF" and first[4:8] == b"\xff\xff\xff\xff" and len(first) > 44
            engine.chunk_gate.set()
            data = first + b"".join(stream)
        assert np.array_equal(np.frombuffer(data[44:], dtype="<i2"), np.frombuffer(reference.content, dtype="<i2"))
        engine.chunk_gate.set()


def test_stream_pcm(client: httpx.Client) -> None:
    whole = speech(client, input=THREE_SENTENCES, response_format="pcm").content
    with client.stream("POST", "/v1/audio/speech", json={"input": THREE_SENTENCES, "stream": True,
                                                          "response_format": "pcm"}) as response:  # fmt: skip
        assert response.status_code == 200
        assert b"".join(response.iter_bytes()) == whole


# ---------------------------------------------------------------- fish-speech 1.2 /v1/invoke


def post_api_body(**over) -> dict:
    """Exactly the body fish-speech 1.2's tools/post_api.py sends."""
    body = {"text": "测试说话", "reference_text": None, "reference_audio": None, "max_new_tokens": 1024,
            "chunk_length": 100, "top_p": 0.7, "repetition_penalty": 1.2, "temperature": 0.7,
            "speaker": "1paimon", "emotion": "e1", "format": "wav", "streaming": False}  # fmt: skip
    body.update(over)
    return body


def test_invoke_like_post_api(client: httpx.Client) -> None:
    response = client.post("/v1/invoke", json=post_api_body())
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == "attachment; filename=audio.wav"
    assert response.headers["x-voice"] == "1paimon/e1"
    assert_speech(wav_samples(response.content))
    flac = client.post("/v1/invoke", json=post_api_body(format="flac"))
    assert flac.status_code == 200 and flac.content[:4] == b"fLaC"
    assert client.post("/v1/invoke", json={"text": "Only text."}).headers["x-voice"] == "default"
    with client.stream("POST", "/v1/invoke", json=post_api_body(streaming=True)) as streamed:
        data = b"".join(streamed.iter_bytes())
    assert data[:4] == b"RIFF" and np.array_equal(np.frombuffer(data[44:], "<i2"), wav_samples(response.content))


def test_invoke_uploaded_reference_is_encoded_once(client: httpx.Client) -> None:
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.3 * np.sin(np.arange(8000) / 5), 16000, format="WAV")
    upload = base64.b64encode(buffer.getvalue()).decode()
    before = client.get("/health").json()["reference_cache"]
    for _ in range(2):
        body = post_api_body(speaker=None, emotion=None, reference_audio=upload, reference_text="hello")
        assert client.post("/v1/invoke", json=body).status_code == 200
    after = client.get("/health").json()["reference_cache"]
    assert after["encoded"] == before["encoded"] + 1 and after["memory_hits"] >= before["memory_hits"] + 1


def test_invoke_bad_input(client: httpx.Client) -> None:
    assert error_of(client.post("/v1/invoke", json=post_api_body(speaker="nobody")), 400)["code"] == "voice_not_found"
    assert error_of(client.post("/v1/invoke", json=post_api_body(emotion="sad")), 400)["param"] == "voice"
    assert error_of(client.post("/v1/invoke", json=post_api_body(format="ogg")), 400)["code"] == "unsupported_format"
    assert error_of(client.post("/v1/invoke", json=post_api_body(top_p=3.0)), 400)["param"] == "top_p"
    bad_b64 = post_api_body(reference_audio="not base64!!")
    assert error_of(client.post("/v1/invoke", json=bad_b64), 400)["param"] == "reference_audio"
    not_audio = post_api_body(reference_audio=base64.b64encode(b"this is no audio file").decode())
    assert error_of(client.post("/v1/invoke", json=not_audio), 400)["code"] == "bad_reference_audio"
    error_of(client.post("/v1/invoke", json={"speaker": "1paimon"}), 400)  # no text


# ---------------------------------------------------------------- bad input and robustness


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"input": ""}, 400, "invalid_request"),
        ({"input": "   \n\t"}, 400, "invalid_request"),
        ({"input": "x" * (MAX_CHARS + 1)}, 400, "invalid_request"),
        ({"input": "..."}, 400, "invalid_request"),
        ({"voice": "nobody"}, 400, "voice_not_found"),
        ({"voice": "../../etc/passwd"}, 400, "voice_not_found"),
        ({"response_format": "ogg"}, 400, "unsupported_format"),
        ({"input": "nul \x00 inside"}, 400, "invalid_request"),
        ({"voice": "v" * 201}, 400, "invalid_request"),
        ({"speed": 0.1}, 400, "invalid_request"),
        ({"speed": "fast"}, 400, "invalid_request"),
        ({"input": 42}, 400, "invalid_request"),
        ({"model": "gpt-4o-mini-tts-not-here"}, 404, "model_not_found"),
    ],
)
def test_speech_bad_input(client: httpx.Client, body: dict, status: int, code: str) -> None:
    assert error_of(speech(client, **body), status)["code"] == code


def test_malformed_requests(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    for raw in (b'{"input": "Hello"', b"", b"[1, 2]", b"\xff\xfe"):
        error_of(client.post("/v1/audio/speech", content=raw, headers=headers), 400)
    truncated = client.post("/v1/audio/speech", content=b'{"input":', headers=headers)
    assert error_of(truncated, 400)["code"] == "invalid_json"
    error_of(client.post("/v1/audio/speech", json={}), 400)  # no input
    big = json.dumps({"input": "a" * (300 * 1024)})
    assert error_of(client.post("/v1/audio/speech", content=big, headers=headers), 413)["code"] == "body_too_large"
    assert error_of(client.get("/v1/nothing"), 404)
    assert error_of(client.put("/health"), 405)


def test_engine_failure_fails_one_request_only(client: httpx.Client) -> None:
    assert error_of(speech(client, input="Please EXPLODE now."), 500)["code"] == "engine_error"
    assert speech(client).status_code == 200
    assert client.get("/health").json()["status"] == "ok"


def test_queue_full_gives_429_and_timeout_gives_504(base_config: ServerConfig) -> None:
    config = replace(base_config, max_pending=1, request_timeout=1.5)
    engine = GatedPiper(base_config.model, 1)
    with serve(config, engine) as c:
        engine.chunk_gate.clear()
        results: list[httpx.Response] = []
        first = threading.Thread(target=lambda: results.append(speech(c, input=THREE_SENTENCES)))
        first.start()
        assert engine.first_sent.wait(10)
        busy = speech(c)
        assert error_of(busy, 429)["code"] == "queue_full" and busy.headers["retry-after"]
        first.join(10)
        # The held request passed its deadline while the engine waited: 504, and the server goes on.
        assert error_of(results[0], 504)["code"] == "timeout"
        engine.chunk_gate.set()
        deadline = time.monotonic() + 10
        while c.get("/health").json()["queue"]["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert speech(c).status_code == 200


def test_health_is_503_while_loading(base_config: ServerConfig) -> None:
    engine = GatedPiper(base_config.model, 1, hold_load=True)
    with serve(base_config, engine, wait_ready=False) as c:
        loading = c.get("/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        assert error_of(speech(c), 503)["code"] == "not_ready"
        assert error_of(c.get("/v1/audio/voices"), 503)
        engine.load_gate.set()
        deadline = time.monotonic() + 20
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert engine.warmed and speech(c).status_code == 200


def test_load_failure_is_reported(base_config: ServerConfig, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    (tmp_path / "broken.onnx.json").write_text(base_config.model.with_suffix(".onnx.json").read_text())
    failures: list[BaseException] = []
    app = create_app(replace(base_config, model=broken), on_load_failed=failures.append)
    state = app.state.tts
    state.start_loading()
    assert not state.wait_loaded(30)
    assert len(failures) == 1
    status, body = state.health()
    assert status == 503 and body["status"] == "failed" and "broken.onnx" in body["error"]


def test_reference_cache_survives_restart_on_disk(base_config: ServerConfig, tmp_path: Path) -> None:
    config = replace(base_config, cache_dir=tmp_path / "cache")
    pairs = 4  # 1paimon/e1, 2r/e1 and the two takes of 2r/happy
    with serve(config) as c:
        stats = c.get("/health").json()["reference_cache"]
        assert stats["encoded"] == pairs and stats["disk_hits"] == 0
        audio = speech(c, voice="2r/happy").content
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == pairs
    assert not list((tmp_path / "cache").rglob("*.partial"))
    with serve(config) as c:
        stats = c.get("/health").json()["reference_cache"]
        assert stats["encoded"] == 0 and stats["disk_hits"] == pairs
        assert speech(c, voice="2r/happy").content == audio
