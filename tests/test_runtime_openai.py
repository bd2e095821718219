"""The bundled server through the official `openai` package, unchanged: every response format decodes to the
right length and sample rate, OpenAI's voice names reach the mapped voices, errors become the SDK's
exception classes, streamed formats arrive before synthesis ends, and Open WebUI's request works as sent.

A real uvicorn server with the real piper engine on the generated test voice (tests/support/tts_server.py).
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

for _module in ("openai", "av", "fastapi", "uvicorn", "piper", "onnxruntime", "onnx", "imgbuild_runtime"):
    if os.environ.get("CI", "").lower() not in ("true", "1", "yes"):
        pytest.importorskip(_module)  # under CI a missing dependency fails the run instead

import av  # noqa: E402
import httpx  # noqa: E402
import openai  # noqa: E402

from imgbuild_runtime.state import ServerConfig  # noqa: E402
from imgbuild_runtime.testvoice import DEFAULT_SAMPLE_RATE, write_test_voice  # noqa: E402
from tests.support.tts_server import GatedPiper, make_ref_data, serve  # noqa: E402

pytestmark = pytest.mark.network_local
RATE = DEFAULT_SAMPLE_RATE
KEY = "sk-imgbuild-test"
TEXT = "The first sentence is here. The second one follows it. And this is the third."
# format -> (Content-Type, sample rate a decoder reports); Opus decoders always give 48 kHz (RFC 7845).
EXPECTED = {
    "mp3": ("audio/mpeg", RATE),
    "opus": ("audio/ogg; codecs=opus", 48000),
    "aac": ("audio/aac", RATE),
    "flac": ("audio/flac", RATE),
    "wav": ("audio/wav", RATE),
}


def decode(data: bytes) -> tuple[float, int]:
    """(seconds, sample rate) as FFmpeg decodes the file."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        rate = stream.codec_context.sample_rate
    assert samples > 0
    return samples / rate, rate


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, GatedPiper]]:
    root = tmp_path_factory.mktemp("tts-openai")
    voice = write_test_voice(root / "voice")
    config = ServerConfig(
        model=voice.model,
        ref_data=make_ref_data(root / "ref_data"),
        cache_dir=None,
        threads=1,
        max_chars=400,
        max_pending=2,
        request_timeout=60,
        voice_map=(("alloy", "2r/happy"), ("narrator", "1paimon")),
        api_key=KEY,
    )
    engine = GatedPiper(config.model, 1)
    with serve(config, engine) as http:
        yield http, engine


@pytest.fixture(scope="module")
def client(server: tuple[httpx.Client, GatedPiper]) -> openai.OpenAI:
    http, _ = server
    return openai.OpenAI(base_url=f"{str(http.base_url).rstrip('/')}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def reference_seconds(client: openai.OpenAI) -> float:
    pcm = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="pcm").content
    return len(pcm) / 2 / RATE


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_every_format_decodes_with_its_length_and_rate(client: openai.OpenAI, reference_seconds: float, fmt: str) -> None:
    raw = client.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input=TEXT, response_format=fmt)
    content_type, rate = EXPECTED[fmt]
    assert raw.headers["content-type"] == content_type and raw.headers["x-voice"] == "2r/happy"
    seconds, decoded_rate = decode(raw.content)
    assert decoded_rate == rate
    # Lossy encoders add a frame or two of padding; the speech itself is all there.
    assert reference_seconds - 0.01 <= seconds <= reference_seconds + 0.12, (fmt, seconds, reference_seconds)


def test_default_format_is_mp3_and_models_and_instructions(client: openai.OpenAI, reference_seconds: float) -> None:
    for model in ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "en_US-imgbuild_test-tiny"):
        raw = client.audio.speech.with_raw_response.create(
            model=model, voice="alloy", input=TEXT, instructions="Speak calmly."
        )
        assert raw.headers["content-type"] == "audio/mpeg", model
        assert raw.content[:3] == b"ID3" or raw.content[0] == 0xFF
        assert decode(raw.content)[0] == pytest.approx(reference_seconds, abs=0.12)


def test_speed_as_openai_defines_it(client: openai.OpenAI, reference_seconds: float) -> None:
    fast = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="pcm", speed=2.0)
    slow = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="pcm", speed=0.5)
    assert len(fast.content) / 2 / RATE == pytest.approx(reference_seconds / 2, rel=0.05)
    assert len(slow.content) / 2 / RATE == pytest.approx(reference_seconds * 2, rel=0.05)


def test_voice_names_map_to_installed_voices(client: openai.OpenAI) -> None:
    def voice_of(name: str) -> str:
        raw = client.audio.speech.with_raw_response.create(model="tts-1", voice=name, input="Hi.", response_format="wav")
        return raw.headers["x-voice"]

    assert voice_of("alloy") == "2r/happy"  # mapped by the table
    assert voice_of("narrator") == "1paimon"  # a name of the table's own
    assert voice_of("echo") == voice_of("shimmer") == "default"  # OpenAI names the table leaves out
    assert voice_of("2r/e1") == "2r/e1"  # installed names still work
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(model="tts-1", voice="nobody", input="Hi.")
    message = refused.value.body["message"]
    assert "nobody" in message and "2r/happy" in message and "narrator" in message


def test_errors_become_the_sdks_exception_classes(server: tuple[httpx.Client, GatedPiper]) -> None:
    http, engine = server
    base = f"{str(http.base_url).rstrip('/')}/v1"
    with pytest.raises(openai.AuthenticationError) as no_key:
        openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0).audio.speech.create(
            model="tts-1", voice="alloy", input="Hi."
        )
    assert no_key.value.code == "invalid_api_key"
    good = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as no_model:
        good.audio.speech.create(model="tts-2-ultra", voice="alloy", input="Hi.")
    assert no_model.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad_format:
        good.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="ogg")  # type: ignore[arg-type]
    assert bad_format.value.code == "unsupported_format"
    with pytest.raises(openai.BadRequestError):
        good.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", speed=9.0)
    # Two requests held by the engine fill a queue of two: the third is a RateLimitError.
    engine.chunk_gate.clear()
    engine.first_sent.clear()
    held = [threading.Thread(target=good.audio.speech.create, kwargs={"model": "tts-1", "voice": "alloy", "input": TEXT,
                                                                     "response_format": "wav"}) for _ in range(2)]  # fmt: skip
    try:
        for thread in held:
            thread.start()
        assert engine.first_sent.wait(10)
        deadline = threading.Event()
        while http.get("/health").json()["queue"]["pending"] < 2 and not deadline.wait(0.05):
            pass
        with pytest.raises(openai.RateLimitError):
            good.audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
    finally:
        engine.chunk_gate.set()
        for thread in held:
            thread.join(30)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "pcm"])
def test_streaming_helper_gets_audio_before_synthesis_ends(
    server: tuple[httpx.Client, GatedPiper], client: openai.OpenAI, reference_seconds: float, fmt: str
) -> None:
    _, engine = server
    engine.chunk_gate.clear()  # the engine holds after the first sentence until the first bytes arrived
    engine.first_sent.clear()
    try:
        with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=TEXT, response_format=fmt, extra_body={"stream": True}
        ) as response:
            assert response.headers.get("content-length") is None  # chunked: sent as it is made
            chunks = response.iter_bytes()
            first = next(chunks)
            # The engine is still held after sentence one: these bytes were sent before the rest existed.
            assert first and engine.held.wait(10)
            engine.chunk_gate.set()
            data = first + b"".join(chunks)
    finally:
        engine.chunk_gate.set()
    if fmt == "pcm":
        assert len(data) / 2 / RATE == pytest.approx(reference_seconds, abs=0.01)
    else:
        assert decode(data)[0] == pytest.approx(reference_seconds, abs=0.12)


def test_open_webui_request_as_it_sends_it(server: tuple[httpx.Client, GatedPiper]) -> None:
    """Open WebUI's audio router (TTS engine "OpenAI"): its browser posts {"input", "voice"}, the backend sets
    "model" from the TTS settings and posts it with aiohttp's json= (json.dumps defaults), Content-Type
    application/json and `Authorization: Bearer <TTS API key>` to `<API Base URL>/audio/speech`, then saves
    the whole answer as .mp3. Its settings list comes from `<base>/audio/models` and `<base>/audio/voices`."""
    http, _ = server
    body = json.dumps({"input": "Hello from Open WebUI.", "voice": "alloy", "model": "tts-1"}).encode()
    assert body == b'{"input": "Hello from Open WebUI.", "voice": "alloy", "model": "tts-1"}'
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    response = http.post("/v1/audio/speech", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/mpeg"
    seconds, rate = decode(response.content)
    assert rate == RATE and seconds > 0.5
    models = http.get("/v1/audio/models", headers={"Authorization": f"Bearer {KEY}"}).json()["models"]
    assert {"tts-1", "tts-1-hd"} <= {m["id"] for m in models}


def test_health_needs_no_key_but_everything_else_does(server: tuple[httpx.Client, GatedPiper]) -> None:
    http, _ = server
    assert http.get("/health").status_code == 200
    for path in ("/v1/models", "/v1/audio/voices"):
        refused = http.get(path)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert refused.headers["content-type"].startswith("application/json")
    assert http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert http.get("/docs").status_code in (401, 404)


def test_voice_map_file_and_bad_entries(tmp_path: Path) -> None:
    from imgbuild_runtime.__main__ import parse_args

    table = tmp_path / "voices.txt"
    table.write_text("# OpenAI name = installed voice\nalloy = 2r/happy\necho=1paimon, nova=default\n")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    config, _ = parse_args(["--model", str(model), "--voice-map", str(table)])
    assert dict(config.voice_map) == {"alloy": "2r/happy", "echo": "1paimon", "nova": "default"}
    config, args = parse_args(["--model", str(model), "--voice-map", "alloy=x"])
    assert config.voice_map == (("alloy", "x"),) and args.host == "127.0.0.1" and not config.docs
    assert (config.header_timeout, config.body_timeout, config.cache_max_bytes) == (10.0, 30.0, 256 * 1024 * 1024)
    config, _ = parse_args(["--model", str(model), "--header-timeout", "2", "--cache-max-mb", "1"])
    assert (config.header_timeout, config.cache_max_bytes) == (2.0, 1024 * 1024)
    with pytest.raises(SystemExit):
        parse_args(["--model", str(model), "--body-timeout", "0"])
    table.write_text("alloy = 2r\nbroken line\n")
    with pytest.raises(SystemExit):
        parse_args(["--model", str(model), "--voice-map", str(table)])


def test_voice_map_to_a_missing_voice_fails_loading(tmp_path: Path) -> None:
    from imgbuild_runtime.app import create_app

    voice = write_test_voice(tmp_path / "voice")
    failures: list[BaseException] = []
    config = ServerConfig(model=voice.model, cache_dir=None, voice_map=(("alloy", "nobody"),))
    state = create_app(replace(config), on_load_failed=failures.append).state.tts
    state.start_loading()
    assert not state.wait_loaded(60)
    assert "alloy=nobody" in state.error and str(tmp_path) not in state.error
