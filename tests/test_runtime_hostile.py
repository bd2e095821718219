"""The bundled server against hostile and unlucky clients: bounded memory per request, bounded uploads and
reference cache, work nobody waits for is stopped, safe defaults (timeouts, connection limit, API key,
no /docs, no host paths), text that is not text, and SIGTERM. Real uvicorn, real piper on the test voice.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

for _module in ("fastapi", "uvicorn", "httpx", "piper", "onnxruntime", "onnx", "soundfile", "imgbuild_runtime"):
    if os.environ.get("CI", "").lower() not in ("true", "1", "yes"):
        pytest.importorskip(_module)  # under CI a missing dependency fails the run instead

import httpx  # noqa: E402
import soundfile  # noqa: E402

from imgbuild_runtime.engine import EncodedReference  # noqa: E402
from imgbuild_runtime.piper_engine import split_at_budget  # noqa: E402
from imgbuild_runtime.refcache import ReferenceCache  # noqa: E402
from imgbuild_runtime.state import ServerConfig  # noqa: E402
from imgbuild_runtime.testvoice import write_test_voice  # noqa: E402
from tests.support.tts_server import GatedPiper, free_port, make_ref_data, serve  # noqa: E402

pytestmark = pytest.mark.network_local
THREE_SENTENCES = "The first sentence is here. The second one follows it. And this is the third."
REPO = Path(__file__).resolve().parents[1]


class CountingPiper(GatedPiper):
    """GatedPiper that counts the chunks the engine really made."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.made = 0

    def synthesize(self, text, references, options, cancel):
        for chunk in super().synthesize(text, references, options, cancel):
            self.made += 1
            yield chunk


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> ServerConfig:
    root = tmp_path_factory.mktemp("tts-hostile")
    voice = write_test_voice(root / "voice")
    return ServerConfig(
        model=voice.model,
        ref_data=make_ref_data(root / "ref_data"),
        cache_dir=root / "cache",
        threads=1,
        max_chars=400,
        max_pending=2,
        request_timeout=30,
        max_body_bytes=256 * 1024,
        max_reference_seconds=10,
        header_timeout=1.0,
        body_timeout=1.0,
    )


@pytest.fixture(scope="module")
def client(config: ServerConfig) -> Iterator[httpx.Client]:
    with serve(config) as c:
        yield c


def wait_for(check, seconds: float = 10) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def port_of(client: httpx.Client) -> int:
    return int(client.base_url.port)


# ---------------------------------------------------------------- 9: memory per request


def test_long_runs_are_cut_at_word_boundaries_within_the_budget() -> None:
    words = list(" ".join(["abcde"] * 100))
    pieces = split_at_budget(words, 40)
    assert all(len(p) <= 40 for p in pieces) and sum(map(len, pieces)) == len(words)
    assert all(p[-1] == " " for p in pieces[:-1])  # cut after a word, never inside one
    assert [len(p) for p in split_at_budget(list("x" * 95), 40)] == [40, 40, 15]  # no boundary: a hard cut
    assert split_at_budget(list("short"), 40) == [list("short")]


def test_a_4096_character_sentence_stays_within_its_memory_bound(config: ServerConfig) -> None:
    """Without the phoneme budget this voice grew by 226 MB (and kept 190 MB); the bound is 100 MB."""
    script = textwrap.dedent(f"""
        import threading
        from pathlib import Path
        from imgbuild_runtime.engine import SynthesisOptions
        from imgbuild_runtime.piper_engine import PiperEngine

        def status(key):
            return next(int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith(key))

        engine = PiperEngine(Path({str(config.model)!r}), 1)
        engine.load(); engine.warmup()
        words = "the quick brown fox jumps over a lazy dog and keeps running along the river bank".split()
        text = " ".join(words[i % len(words)] for i in range(1000))[:4096]
        idle = status("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
        seconds = sum(c.size for c in engine.synthesize(text, (), SynthesisOptions(), threading.Event()))
        print(status("VmHWM") - idle, status("VmRSS") - idle, seconds / engine.info().sample_rate)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    peak, after, audio = (float(v) for v in out.stdout.split())
    assert audio > 300  # all of it was spoken
    assert peak < 100, f"peak {peak} MB above idle"
    assert after < 60, f"{after} MB still held after the request"


# ---------------------------------------------------------------- 10: uploads


def flac_of_silence(seconds: int, rate: int = 8000) -> str:
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", rate, 1, format="FLAC") as f:
        block = np.zeros(rate * 60, dtype=np.int16)
        for _ in range(seconds // 60):
            f.write(block)
    return base64.b64encode(buffer.getvalue()).decode()


def test_upload_limits_refuse_before_decoding(client: httpx.Client) -> None:
    hour = flac_of_silence(3600)
    assert len(hour) < 256 * 1024  # a small upload...
    started = time.monotonic()
    body = {"text": "Hi.", "reference_audio": hour, "reference_text": "silence"}
    refused = client.post("/v1/invoke", json=body)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "bad_reference_audio"
    assert "3600.0 s long; at most 10 s" in refused.json()["error"]["message"]
    assert time.monotonic() - started < 5  # ...refused from its header, not decoded (an hour is 800 MB of floats)
    long_text = {"text": "Hi.", "reference_audio": flac_of_silence(60), "reference_text": "x" * 1001}
    refused = client.post("/v1/invoke", json=long_text)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "reference_text"


def test_chunked_bodies_count_against_the_body_limit(client: httpx.Client) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"input": "'
        for _ in range(2000):  # 2 MB, no Content-Length: chunked transfer
            yield b"a" * 1024
        yield b'"}'

    response = client.post("/v1/audio/speech", content=body(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_disk_cache_is_bounded_and_keeps_what_was_used_last(tmp_path: Path) -> None:
    def encode(audio: np.ndarray, rate: int, text: str) -> EncodedReference:
        return EncodedReference(text=text, arrays={"tokens": np.zeros(2048, np.int32)})

    cache = ReferenceCache("test-v1", encode, tmp_path, max_disk_bytes=60_000)
    wav = io.BytesIO()
    soundfile.write(wav, np.zeros(800, np.float32), 8000, format="WAV")
    first = cache.get_bytes(wav.getvalue(), "entry 0")
    for i in range(1, 12):
        os.utime(next(tmp_path.rglob(f"{cache.key(cache_digest(wav), 'entry 0')}.npz")))  # entry 0 stays in use
        cache.get_bytes(wav.getvalue(), f"entry {i}")
        time.sleep(0.01)
    files = list(tmp_path.rglob("*.npz"))
    assert sum(f.stat().st_size for f in files) <= 60_000 and 3 <= len(files) < 12
    assert any(f.name.startswith(cache.key(cache_digest(wav), "entry 0")) for f in files)
    assert first.text == "entry 0"
    # Transcripts are stored as UTF-8: a 1000-character text adds about 1 KB, not 4.
    big = ReferenceCache("test-v1", encode, tmp_path / "big").get_bytes(wav.getvalue(), "y" * 1000)
    assert big.text == "y" * 1000
    (entry,) = (tmp_path / "big").rglob("*.npz")
    small = ReferenceCache("test-v1", encode, tmp_path / "small")
    small.get_bytes(wav.getvalue(), "y")
    (small_entry,) = (tmp_path / "small").rglob("*.npz")
    assert entry.stat().st_size - small_entry.stat().st_size < 1500


def cache_digest(wav: io.BytesIO) -> str:
    import hashlib

    return hashlib.sha256(wav.getvalue()).hexdigest()


# ---------------------------------------------------------------- 11: work nobody waits for


def raw_request(port: int, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    head = (f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    sock.sendall(head + body)
    return sock


def test_disconnect_stops_synthesis_and_frees_the_queue(config: ServerConfig) -> None:
    engine = CountingPiper(config.model, 1)
    with serve(replace(config, max_pending=2), engine) as c:
        engine.warmed = True
        engine.chunk_gate.clear()
        engine.first_sent.clear()
        made_before = engine.made
        body = b'{"input": "%s", "response_format": "wav"}' % THREE_SENTENCES.encode()
        abandoned = [raw_request(port_of(c), body) for _ in range(2)]
        assert engine.first_sent.wait(10)
        for sock in abandoned:
            sock.close()  # both clients give up while the first is being synthesized
        # Their slots are free at once, though the engine is still held inside the first request.
        assert wait_for(lambda: c.get("/health").json()["queue"]["pending"] == 0, 5)
        engine.chunk_gate.set()
        ok = [c.post("/v1/audio/speech", json={"input": "Hi.", "response_format": "wav"}) for _ in range(2)]
        assert [r.status_code for r in ok] == [200, 200]
        # The abandoned requests stopped after their first sentence: 1 chunk, not 3 + 3.
        assert engine.made - made_before - 2 == 1


def test_timeout_stops_the_engine_and_the_next_request_is_served(config: ServerConfig) -> None:
    engine = CountingPiper(config.model, 1)
    with serve(replace(config, request_timeout=1.0), engine) as c:
        engine.warmed = True
        engine.chunk_gate.clear()
        engine.first_sent.clear()
        made_before = engine.made
        late = c.post("/v1/audio/speech", json={"input": THREE_SENTENCES, "response_format": "wav"})
        assert late.status_code == 504
        engine.chunk_gate.set()
        assert c.post("/v1/audio/speech", json={"input": "Hi.", "response_format": "wav"}).status_code == 200
        assert engine.made - made_before == 2  # the timed-out request's first sentence, then "Hi."


# ---------------------------------------------------------------- 12: safe defaults


def test_slow_headers_and_stalled_bodies_are_cut_off(client: httpx.Client) -> None:
    idle = socket.create_connection(("127.0.0.1", port_of(client)))  # connects and never says a word
    idle.settimeout(10)
    started = time.monotonic()
    assert idle.recv(1024) == b"" and time.monotonic() - started < 5
    idle.close()
    slow = socket.create_connection(("127.0.0.1", port_of(client)))
    slow.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\n")  # ...and never the rest of the head
    slow.settimeout(10)
    started = time.monotonic()
    assert slow.recv(1024) == b""  # closed by the server
    assert time.monotonic() - started < 5
    slow.close()
    stalled = socket.create_connection(("127.0.0.1", port_of(client)))
    stalled.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{\"input\": ")  # fmt: skip
    stalled.settimeout(10)
    answer = b""
    while b"body_timeout" not in answer and (part := stalled.recv(4096)):
        answer += part
    assert answer.startswith(b"HTTP/1.1 408") and b"body_timeout" in answer
    stalled.close()


def test_connection_limit(config: ServerConfig) -> None:
    with serve(replace(config, max_connections=4, header_timeout=30)) as c:
        idle = [socket.create_connection(("127.0.0.1", port_of(c))) for _ in range(4)]
        try:
            time.sleep(0.3)
            with httpx.Client(base_url=c.base_url) as other:
                assert other.get("/health").status_code == 503
        finally:
            for sock in idle:
                sock.close()
        assert wait_for(lambda: httpx.get(f"{c.base_url}/health").status_code == 200)


def test_docs_only_when_asked_and_no_server_paths(client: httpx.Client, config: ServerConfig) -> None:
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404
    voices = client.get("/v1/audio/voices").text
    assert str(config.ref_data) not in voices and str(config.model.parent) not in voices
    with serve(replace(config, docs=True)) as c:
        assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200


# ---------------------------------------------------------------- 13: not text; SIGTERM


@pytest.mark.parametrize("raw", [b'{"input": "a\\u0000b"}', b'{"input": "lone \\ud800 half"}',
                                 b'{"input": "Hi.", "voice": "\\udfff"}'])  # fmt: skip
def test_nul_and_lone_surrogates_are_400(client: httpx.Client, raw: bytes) -> None:
    response = client.post("/v1/audio/speech", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    invoke = client.post("/v1/invoke", content=raw.replace(b'"input"', b'"text"').replace(b'"voice"', b'"speaker"'),
                         headers={"content-type": "application/json"})  # fmt: skip
    assert invoke.status_code == 400


def test_sigterm_exits_0_even_while_streaming(config: ServerConfig) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "runtime")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgbuild_runtime", "--model", str(config.model), "--port", str(port),
         "--threads", "1", "--no-disk-cache", "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: _status(f"{url}/health") == 200, 60)
        long_text = " ".join([THREE_SENTENCES] * 5)
        with httpx.stream("POST", f"{url}/v1/audio/speech", json={"input": long_text, "response_format": "pcm"}) as r:
            assert r.status_code == 200
            chunks = r.iter_raw()
            next(chunks)
            proc.send_signal(signal.SIGTERM)
            try:
                for _ in chunks:
                    pass
            except httpx.HTTPError:
                pass  # the stream may be cut: the server is going away
        assert proc.wait(20) == 0, proc.stdout.read().decode() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0
