"""The runtime's fishspeech engine on fish-speech 1.2's own code with tiny stand-in checkpoints (random values,
the real file formats; the decoder is the full firefly architecture): loading, voices from ref_data, the
reference cache, cancellation, bad input through the HTTP API, and token equality with fish-speech's own
`generate_long` at fp32.

Needs torch and fish-speech 1.2's source (scripts/setup_torch.sh makes .venv-torch with both); scripts/test.sh
runs this file there. The precision choice and the registry are checked without torch.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from imgbuild_runtime.fish_engine import PRECISIONS, choose_precision, cpu_flags, find_decoder

TORCH = all(__import__("importlib").util.find_spec(m) for m in ("torch", "fish_speech", "fastapi", "httpx"))
if not TORCH and os.environ.get("IMGBUILD_REQUIRE_TORCH") == "1":
    raise RuntimeError("IMGBUILD_REQUIRE_TORCH=1 but torch or fish-speech is missing: run scripts/setup_torch.sh")
needs_torch = pytest.mark.skipif(not TORCH, reason="needs .venv-torch (scripts/setup_torch.sh)")
SEED = 1234


# ---------------------------------------------------------------- from .venv, the torch tests in .venv-torch


@pytest.mark.skipif(TORCH, reason="this Python runs the torch tests itself")
def test_torch_tests_pass_in_the_torch_venv() -> None:
    """scripts/test.sh runs .venv's pytest: this runs the tests below in .venv-torch and reports their result."""
    python = Path(__file__).resolve().parents[1] / ".venv-torch" / "bin" / "python"
    if not python.exists():
        reason = f"{python} does not exist (scripts/setup_torch.sh makes it)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    done = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "not test_torch_tests_pass_in_the_torch_venv"],
                          cwd=python.parents[2], env={**os.environ, "IMGBUILD_REQUIRE_TORCH": "1"},
                          capture_output=True, text=True, timeout=1800)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0 and " passed" in summary and "skipped" not in summary, done.stdout[-6000:]


# ---------------------------------------------------------------- without torch


def test_precision_follows_cpu_features_and_measurement() -> None:
    calls: list[int] = []

    def measure() -> dict[str, float]:
        calls.append(1)
        return {"fp32": 0.002, "bf16": 0.010}

    assert choose_precision("auto", {"avx2", "avx512f"}, measure) == ("fp32", "the CPU has no native bf16")
    assert not calls  # nothing to measure without native bf16
    precision, why = choose_precision("auto", {"avx512_bf16", "amx_bf16"}, measure)
    assert precision == "fp32" and "amx_bf16" in why and "bf16 10.00 ms" in why and calls
    assert choose_precision("auto", {"amx_bf16"}, lambda: {"fp32": 0.004, "bf16": 0.001})[0] == "bf16"
    assert choose_precision("bf16", set(), measure) == ("bf16", "requested")
    assert choose_precision("int8", {"avx512_bf16"}, measure) == ("int8", "requested")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        choose_precision("int4", set(), measure)
    assert set(PRECISIONS) == {"auto", "fp32", "bf16", "int8"}


def test_cpu_flags_of_the_first_processor() -> None:
    text = "processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    assert cpu_flags(text) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags("no flags here") == set()


def test_missing_decoder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="firefly-gan-vq-.*found none"):
        find_decoder(tmp_path)


def test_registry_makes_the_engine_without_torch(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import sys; import imgbuild_runtime.state as s; "
                           "e = s.make_engine(s.ServerConfig(model=sys.argv[1], engine='fishspeech', precision='fp32')); "
                           "print(type(e).__name__, sorted(m for m in ('torch', 'fish_speech') if m in sys.modules))",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "FishSpeechEngine []", done.stderr[-2000:]


def test_server_exits_1_naming_a_folder_that_is_no_checkpoint(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "imgbuild_runtime", "--engine", "fishspeech", "--model", str(tmp_path),
                           "--port", "0", "--no-disk-cache", "--ref-data", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no config.json" in done.stderr, done.stderr[-2000:]


# ---------------------------------------------------------------- with torch and fish-speech


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.standins.fish12 import make_fish12

    return make_fish12(tmp_path_factory.mktemp("fish12") / "fish-speech-1.2-sft", "tiny", seed=0)


def write_voice(folder: Path, name: str, text: str, hz: float, seconds: float = 1.5) -> None:
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(22050 * seconds)) / 22050
    soundfile.write(folder / f"{name}.wav", 0.3 * np.sin(2 * np.pi * hz * t) * (1 + np.sin(3 * t)) / 2, 22050)
    (folder / f"{name}.lab").write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def ref_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ref_data")
    write_voice(root / "1paimon" / "e1", "2003_1", "我们这边也不是那么好骗的", 220)
    write_voice(root / "2r" / "e1", "2r", "a second speaker", 330)
    return root


@pytest.fixture(scope="module")
def fish(checkpoint: Path):  # type: ignore[no-untyped-def]
    from imgbuild_runtime.fish_engine import FishSpeechEngine

    loaded = FishSpeechEngine(checkpoint, threads=2, precision="fp32")
    loaded.load()
    return loaded


def sampling(tokens: int) -> dict[str, float]:
    return {"max_new_tokens": tokens, "chunk_length": 100, "top_p": 0.7, "repetition_penalty": 1.2,
            "temperature": 0.7}


@needs_torch
def test_engine_tokens_equal_fish_speech_generate_long(fish, checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    """Same weights, seed and fp32: the engine's semantic tokens are fish-speech's, sentence by sentence."""
    import torch
    from fish_speech.models.text2semantic.llama import BaseTransformer
    from tools.llama.generate import decode_one_token_ar, generate_long

    reference = fish.encode_reference(*voice_samples(220), "我们这边也不是那么好骗的")
    text = "The first sentence is here. And a second one follows it!"
    upstream = BaseTransformer.from_pretrained(str(checkpoint), load_weights=True).to(torch.float32).eval()
    prompt = torch.from_numpy(reference.arrays["codes"]).to(torch.int)
    for refs, kwargs in (([], {}), ([reference], {"prompt_text": reference.text, "prompt_tokens": prompt})):
        torch.manual_seed(SEED)
        theirs = [r.codes for r in generate_long(model=upstream, device="cpu", decode_one_token=decode_one_token_ar,
                                                 text=text, max_new_tokens=24, chunk_length=30, top_p=0.7,
                                                 repetition_penalty=1.2, temperature=0.7, **kwargs)
                  if r.action == "sample"]
        torch.manual_seed(SEED)
        ours = [s.codes for s in fish.semantic_segments(text, refs, {**sampling(24), "chunk_length": 30})]
        assert len(theirs) == len(ours) == 2
        for a, b in zip(theirs, ours):
            assert a.shape == b.shape and a.shape[1] > 0 and torch.equal(a, b)


@needs_torch
def test_bf16_one_token_linear_is_f_linear() -> None:
    """In bf16 generation a one-token linear layer runs as torch.mv, faster than F.linear but the same values."""
    import torch
    import torch.nn.functional as F

    from imgbuild_runtime.fish_engine import import_fish_speech

    import_fish_speech()
    from imgbuild_runtime.fish_generate import linear

    torch.manual_seed(SEED)
    for out_features, in_features in ((64, 32), (37, 53), (1280, 1024), (1024, 4096)):
        weight = torch.randn(out_features, in_features).to(torch.bfloat16)
        bias = torch.randn(out_features).to(torch.bfloat16)
        for shape in ((1, 1, in_features), (1, in_features), (3, in_features)):
            x = torch.randn(*shape).to(torch.bfloat16)
            assert torch.equal(linear(x, weight), F.linear(x, weight))
            assert torch.equal(linear(x, weight, bias), F.linear(x, weight, bias))
        x32 = torch.randn(1, in_features)
        assert torch.equal(linear(x32, weight.float()), F.linear(x32, weight.float()))


@needs_torch
def test_int8_quantizes_every_generator_linear_layer_per_channel(checkpoint: Path) -> None:
    """--precision int8: fish-speech's forward on the quantized model stays close to fp32 (per-channel int8
    weights), every linear layer is replaced, and the engine still synthesizes."""
    import torch
    from fish_speech.models.text2semantic.llama import BaseTransformer

    from imgbuild_runtime.engine import SynthesisOptions
    from imgbuild_runtime.fish_engine import FishSpeechEngine, quantize_int8

    fp32 = BaseTransformer.from_pretrained(str(checkpoint), load_weights=True).to(torch.float32).eval()
    int8 = quantize_int8(BaseTransformer.from_pretrained(str(checkpoint), load_weights=True).to(torch.float32).eval())
    assert not any(isinstance(m, torch.nn.Linear) for m in int8.modules())
    torch.manual_seed(SEED)
    tokens = torch.randint(1, 200, (1, 1 + fp32.config.num_codebooks, 12))
    with torch.inference_mode():
        ours, theirs = int8(tokens), fp32(tokens)
    for a, b in ((ours.token_logits, theirs.token_logits), (ours.codebook_logits, theirs.codebook_logits)):
        assert a.shape == b.shape
        assert not torch.equal(a, b)  # quantized for real
        assert cosine(a, b) > 0.99

    engine = FishSpeechEngine(checkpoint, threads=2, precision="int8")
    engine.load()
    assert engine.info().precision == "int8" and engine.decoder_precision in ("fp32", "bf16")
    chunks = list(engine.synthesize("One sentence.", [], SynthesisOptions(sampling=sampling(6)), threading.Event()))
    assert len(chunks) == 1 and chunks[0].size == 5 * 1024 and chunks[0].dtype == np.float32


def cosine(a, b) -> float:  # type: ignore[no-untyped-def]
    import torch.nn.functional as F

    return float(F.cosine_similarity(a.reshape(-1).double(), b.reshape(-1).double(), dim=0))


def voice_samples(hz: float) -> tuple[np.ndarray, int]:
    t = np.arange(22050 * 2) / 22050
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 22050


@needs_torch
def test_second_sentence_and_second_request_reuse_the_cached_prompt(fish) -> None:  # type: ignore[no-untyped-def]
    reference = fish.encode_reference(*voice_samples(330), "a second speaker")
    codes = reference.arrays["codes"]
    assert codes.shape[0] == 4 and codes.shape[1] > 10 and codes.dtype == np.int64
    first = list(fish.semantic_segments("One sentence. Then another.", [reference], {**sampling(6), "chunk_length": 15}))
    assert len(first) == 2
    # The second sentence's prompt is the first one's plus what was generated: only its own text is new.
    assert first[1].prefilled < first[0].prefilled / 2
    again = list(fish.semantic_segments("Something else.", [reference], sampling(6)))
    assert again[0].prefilled < first[0].prefilled - codes.shape[1]  # the reference prompt came from the cache


@needs_torch
def test_synthesize_streams_audio_and_stops_when_cancelled(fish) -> None:  # type: ignore[no-untyped-def]
    from imgbuild_runtime.engine import SynthesisOptions

    options = SynthesisOptions(sampling={**sampling(8), "chunk_length": 15})
    chunks = list(fish.synthesize("One sentence. Then another.", [], options, threading.Event()))
    assert len(chunks) == 2
    for chunk in chunks:
        assert chunk.dtype == np.float32 and chunk.size > 0 and np.abs(chunk).max() <= 1.0
        assert chunk.size % 1024 == 0  # 2 x 512 samples of 44.1 kHz audio per semantic token

    class CancelAfter(threading.Event):
        """Set after `n` checks: the engine checks between tokens."""

        def __init__(self, n: int) -> None:
            super().__init__()
            self.checks = n

        def is_set(self) -> bool:
            self.checks -= 1
            return self.checks < 0 or super().is_set()

    cancel = CancelAfter(3)
    assert list(fish.synthesize("One sentence. Then another.", [], SynthesisOptions(sampling=sampling(500)),
                                  cancel)) == []
    assert cancel.checks == -1  # stopped at the first check after the third token, not after 500


@pytest.fixture(scope="module")
def client(checkpoint: Path, ref_data: Path, fish, tmp_path_factory: pytest.TempPathFactory) -> Iterator:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from imgbuild_runtime.app import create_app
    from imgbuild_runtime.state import ServerConfig

    config = ServerConfig(model=checkpoint, engine="fishspeech", ref_data=ref_data, threads=2, max_chars=300,
                          cache_dir=tmp_path_factory.mktemp("refcache"), precision="fp32")
    app = create_app(config, fish)
    with TestClient(app) as c:
        assert app.state.tts.wait_loaded(300), app.state.tts.error
        yield c


def invoke(client, **over):  # type: ignore[no-untyped-def]
    body = {"text": "测试说话", "max_new_tokens": 6, "speaker": "1paimon", "emotion": "e1", "format": "wav"}
    body.update(over)
    return client.post("/v1/invoke", json=body)


@needs_torch
def test_server_voices_cache_and_audio(client) -> None:  # type: ignore[no-untyped-def]
    health = client.get("/health").json()
    assert (health["engine"], health["sample_rate"], health["precision"]) == ("fishspeech", 44100, "fp32")
    voices = client.get("/v1/audio/voices").json()["voices"]
    assert {"1paimon", "1paimon/e1", "2r", "2r/e1", "default"} <= set(voices)
    # Both ref_data voices were encoded while loading; requests only hit the cache.
    assert health["reference_cache"]["encoded"] == 2
    for _ in range(2):
        response = invoke(client)
        assert response.status_code == 200, response.text
        assert response.content[:4] == b"RIFF" and response.headers["x-voice"] == "1paimon/e1"
    after = client.get("/health").json()["reference_cache"]
    assert after["encoded"] == 2 and after["memory_hits"] >= health["reference_cache"]["memory_hits"] + 2
    speech = client.post("/v1/audio/speech", json={"input": "Hello there.", "voice": "2r", "response_format": "pcm",
                                                   "stream": True})
    assert speech.status_code == 200 and len(speech.content) > 0 and len(speech.content) % 2048 == 0


@needs_torch
def test_server_bad_input(client) -> None:  # type: ignore[no-untyped-def]
    import soundfile

    def error(response, status: int) -> dict:  # type: ignore[no-untyped-def]
        assert response.status_code == status, response.text
        return response.json()["error"]

    assert error(invoke(client, speaker="nobody"), 400)["code"] == "voice_not_found"
    assert error(invoke(client, text=""), 400)["code"] == "invalid_request"
    assert error(invoke(client, text="x" * 301), 400)["code"] == "invalid_request"
    assert error(invoke(client, format="ogg"), 400)["code"] == "unsupported_format"
    assert error(invoke(client, speaker=None, reference_audio="not base64!!"), 400)["param"] == "reference_audio"
    not_audio = base64.b64encode(b"this is no audio file").decode()
    assert error(invoke(client, speaker=None, reference_audio=not_audio), 400)["code"] == "bad_reference_audio"
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(100, dtype=np.float32), 16000, format="WAV")
    short = base64.b64encode(buffer.getvalue()).decode()
    message = error(invoke(client, speaker=None, reference_audio=short, reference_text="hi"), 400)["message"]
    assert "at least" in message
    assert invoke(client).status_code == 200  # the server still serves

