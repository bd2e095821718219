"""The engine interface: what the server needs from a text-to-speech model.

It is shaped for two kinds of engines:
- direct acoustic models with built-in speakers (piper: phonemes -> waveform, one ONNX session);
- LLM + codec engines that clone a voice from reference audio (fish-speech, SparkTTS): the codec encodes
  each reference (audio + its transcript) into tokens once, the LLM generates codec tokens for the text with
  those tokens as prompt, the codec decodes them to audio, sentence by sentence.

So an engine encodes references (`encode_reference`, results cached by the server by file hash, see
refcache.py) and synthesizes from text plus the encoded references of the chosen voice, yielding float32
chunks as soon as each is ready (streaming). Engines are driven from one inference thread at a time (see
scheduler.py), so they need not be thread-safe, and they must check `cancel` between chunks.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EncodedReference:
    """A reference voice sample as the engine's own prompt (e.g. codec tokens [4, T] for fish-speech).

    `arrays` and `meta` are what the disk cache stores (numpy .npz + JSON): keep them plain.
    """

    text: str
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    meta: Mapping[str, object] = field(default_factory=dict)

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        # The transcript as UTF-8 bytes: a numpy string array would store it as UTF-32, four times the size.
        text = np.frombuffer(self.text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
        payload = {"__text__": text, "__meta__": np.array(json.dumps(dict(self.meta)))}
        payload.update({f"a_{k}": v for k, v in self.arrays.items()})
        return payload

    @staticmethod
    def from_npz_dict(data: Mapping[str, np.ndarray]) -> "EncodedReference":
        arrays = {k[2:]: np.asarray(v) for k, v in data.items() if k.startswith("a_")}
        return EncodedReference(
            text=_text_of(data["__text__"]), arrays=arrays, meta=json.loads(str(data["__meta__"]))
        )


def _text_of(stored: np.ndarray) -> str:
    # Entries written before transcripts were stored as UTF-8 hold a numpy string.
    if stored.dtype == np.uint8:
        return stored.tobytes().decode("utf-8", "surrogatepass")
    return str(stored)


@dataclass(frozen=True)
class SynthesisOptions:
    speed: float = 1.0  # 1.0 normal, 2.0 twice as fast
    speaker: str | None = None  # a built-in speaker of the model (multi-speaker voices), None = default
    # The client listens while audio arrives (streaming): engines may cut the first chunk short, e.g. at a
    # clause boundary, so the first audio comes sooner.
    low_latency: bool = False
    # Sampling settings of LLM engines (temperature, top_p, repetition_penalty, max_new_tokens, chunk_length);
    # engines without sampling ignore them.
    sampling: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineInfo:
    engine: str
    model: str
    sample_rate: int
    threads: int
    precision: str
    clones_voices: bool
    speakers: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "engine": self.engine,
            "model": self.model,
            "sample_rate": self.sample_rate,
            "threads": self.threads,
            "precision": self.precision,
            "clones_voices": self.clones_voices,
            "speakers": list(self.speakers),
        }


class Engine(ABC):
    """One loaded model. Lifecycle: construct (cheap) -> load() -> warmup() -> encode/synthesize."""

    name: str = "engine"

    @abstractmethod
    def load(self) -> None:
        """Read the checkpoint and create sessions. Slow; called once, off the event loop."""

    @abstractmethod
    def warmup(self) -> None:
        """Run one short synthesis so the first request does not pay for lazy initialisation."""

    @abstractmethod
    def info(self) -> EngineInfo:
        """Valid after load()."""

    @abstractmethod
    def encoder_id(self) -> str:
        """Identifies how references are encoded (engine + codec checkpoint hash + version).

        Part of the reference cache key: a new codec must not reuse tokens of an old one.
        """

    @abstractmethod
    def encode_reference(self, audio: np.ndarray, sample_rate: int, text: str) -> EncodedReference:
        """Turn a reference recording (mono float32) and its transcript into the engine's prompt."""

    @abstractmethod
    def synthesize(
        self,
        text: str,
        references: Sequence[EncodedReference],
        options: SynthesisOptions,
        cancel: threading.Event,
    ) -> Iterator[np.ndarray]:
        """Yield mono float32 chunks in [-1, 1] at info().sample_rate, one per sentence or codec window."""
