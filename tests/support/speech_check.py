"""Is a WAV intelligible English? Transcribe it offline with PocketSphinx (its US English model ships inside
the PyPI package) and count how many of the words asked for were heard.

Beeps, noise and silence transcribe to nothing or to a stray word; real speech of a plain sentence gets
most of its words back. Used by tests/test_demo_e2e.py and by scripts/demo.sh's final check:

    python -m tests.support.speech_check WAV "the sentence that was asked for"   # exit 1 when not intelligible
"""

from __future__ import annotations

import difflib
import functools
import io
import re
import sys
import wave
from dataclasses import dataclass

import numpy as np

RATE = 16_000  # PocketSphinx's acoustic model is for 16 kHz speech
MIN_RECALL = 1 / 3  # share of the sentence's words that must be heard
MIN_WORDS = 4  # and at least this many of them


@dataclass(frozen=True)
class SpeechCheck:
    expected: tuple[str, ...]
    heard: str
    matched: tuple[str, ...]

    @property
    def recall(self) -> float:
        return len(self.matched) / len(self.expected) if self.expected else 0.0

    @property
    def intelligible(self) -> bool:
        return self.recall >= MIN_RECALL and len(self.matched) >= MIN_WORDS

    def summary(self) -> str:
        verdict = "intelligible" if self.intelligible else "NOT intelligible"
        return (f"{verdict}: heard {len(self.matched)} of {len(self.expected)} words "
                f"({self.recall:.0%}; needs {MIN_RECALL:.0%} and {MIN_WORDS}): \"{self.heard}\"")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def mono_16k(wav: bytes) -> np.ndarray:
    """16-bit mono samples at 16 kHz: channels averaged, low-passed below 8 kHz, then linearly resampled."""
    with wave.open(io.BytesIO(wav)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        rate, channels = w.getframerate(), w.getnchannels()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    samples = samples.reshape(-1, channels).mean(axis=1)
    if rate != RATE and samples.size:
        if rate > RATE:  # windowed-sinc low-pass, so that nothing above the new Nyquist folds back
            cut = 0.95 * (RATE / 2) / rate
            taps = np.arange(-64, 65)
            kernel = np.sinc(2 * cut * taps) * 2 * cut * np.hamming(taps.size)
            samples = np.convolve(samples, kernel, mode="same")
        count = int(samples.size * RATE / rate)
        samples = np.interp(np.arange(count) * rate / RATE, np.arange(samples.size), samples)
    return np.clip(samples, -32768, 32767).astype("<i2")


@functools.cache
def _decoder():  # type: ignore[no-untyped-def]
    from pocketsphinx import Decoder  # imported here: only the speech check needs it

    return Decoder(samprate=RATE, loglevel="FATAL")  # loads a 27 MB language model: once per process


def transcribe(wav: bytes) -> str:
    decoder = _decoder()
    decoder.start_utt()
    decoder.process_raw(mono_16k(wav).tobytes(), full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""


def check_speech(wav: bytes, sentence: str) -> SpeechCheck:
    """Words of `sentence` found in the transcript (each heard word used once; near spellings count)."""
    expected = words(sentence)
    heard = transcribe(wav)
    pool = words(heard)
    matched = []
    for word in expected:
        close = difflib.get_close_matches(word, pool, n=1, cutoff=0.8)
        if close:
            pool.remove(close[0])
            matched.append(word)
    return SpeechCheck(tuple(expected), heard, tuple(matched))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.support.speech_check WAV SENTENCE", file=sys.stderr)
        return 2
    with open(argv[0], "rb") as fh:
        result = check_speech(fh.read(), argv[1])
    print(result.summary())
    return 0 if result.intelligible else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
