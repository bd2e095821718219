"""The piper engine: ONNX VITS voices through piper-tts and onnxruntime, fp32 on the CPU.

Piper cannot clone a voice. From a reference recording it takes only its loudness (RMS), so the output level
matches the reference; the timbre is the model's. A reference speaker whose name is one of the model's
built-in speakers (multi-speaker voices) selects that speaker.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .engine import Engine, EncodedReference, EngineInfo, SynthesisOptions

_WARMUP_TEXT = "Warm up."
_MIN_RMS = 1e-4
# Only first sentences this long are split for streaming, and only where both parts keep a few words.
_SPLIT_MIN_PHONEMES = 60
_CLAUSE_MIN_PHONEMES = 15
_CLAUSE_MARKS = (",", ";", ":")
# The most phonemes one model run gets (about 10-15 s of speech). A VITS run's memory grows with its input,
# faster than linearly: a 4096-character sentence without punctuation run whole took gigabytes. Longer
# sentences are cut at the last word boundary within the budget; this also keeps each chunk short, so a
# cancelled request stops soon.
MAX_PHONEMES = 200


class PiperEngine(Engine):
    name = "piper"

    def __init__(self, model_path: Path, threads: int, config_path: Path | None = None) -> None:
        self.model_path = Path(model_path)
        self.config_path = Path(config_path) if config_path else Path(f"{self.model_path}.json")
        self.threads = threads
        self._voice = None  # piper.PiperVoice after load()

    def load(self) -> None:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        config = PiperConfig.from_dict(json.loads(self.config_path.read_text(encoding="utf-8")))
        options = onnxruntime.SessionOptions()
        # One request runs at a time (scheduler.py), so all cores go to one run; inter-op parallelism only
        # oversubscribes a small CPU.
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Without the arena, memory a long run took goes back to the system when the run ends, instead of
        # staying reserved at the largest size any request ever needed.
        options.enable_cpu_mem_arena = False
        session = onnxruntime.InferenceSession(
            str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        # PiperVoice.load() would build its own session with default options (all logical CPUs).
        self._voice = PiperVoice(session=session, config=config)

    def _loaded(self):  # type: ignore[no-untyped-def]
        if self._voice is None:
            raise RuntimeError("piper engine used before load()")
        return self._voice

    def warmup(self) -> None:
        for _ in self.synthesize(_WARMUP_TEXT, (), SynthesisOptions(), threading.Event()):
            pass

    def info(self) -> EngineInfo:
        voice = self._loaded()
        return EngineInfo(
            engine=self.name,
            model=self.model_path.name.removesuffix(".onnx"),
            sample_rate=int(voice.config.sample_rate),
            threads=self.threads,
            precision="fp32",
            clones_voices=False,
            speakers=tuple(sorted(voice.config.speaker_id_map)),
        )

    def encoder_id(self) -> str:
        return "piper-loudness-v1"

    def encode_reference(self, audio: np.ndarray, sample_rate: int, text: str) -> EncodedReference:
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
        return EncodedReference(text=text, meta={"rms": rms, "seconds": audio.size / max(sample_rate, 1)})

    def synthesize(
        self,
        text: str,
        references: Sequence[EncodedReference],
        options: SynthesisOptions,
        cancel: threading.Event,
    ) -> Iterator[np.ndarray]:
        from piper import SynthesisConfig

        voice = self._loaded()
        speaker_id = voice.config.speaker_id_map.get(options.speaker) if options.speaker else None
        config = SynthesisConfig(speaker_id=speaker_id, length_scale=voice.config.length_scale / options.speed)
        levels = [float(r.meta.get("rms", 0.0)) for r in references]  # type: ignore[arg-type]
        target_rms = sum(levels) / len(levels) if levels else None
        # The whole text is phonemized first (fast), then the model runs sentence by sentence: each chunk is
        # yielded as soon as its sentence is done, which is what a streaming client hears first.
        sentences = [piece for p in voice.phonemize(text) if p for piece in split_at_budget(p, MAX_PHONEMES)]
        if options.low_latency and sentences:
            sentences = _split_first_clause(sentences[0]) + sentences[1:]
        for phonemes in sentences:
            if cancel.is_set():
                return
            audio = np.asarray(voice.phoneme_ids_to_audio(voice.phonemes_to_ids(phonemes), config))
            audio = _normalize(audio.reshape(-1))
            if target_rms is not None and target_rms > _MIN_RMS:
                audio = _match_level(audio, target_rms)
            yield audio


def split_at_budget(phonemes: list[str], budget: int) -> list[list[str]]:
    """Pieces of at most `budget` phonemes, cut after the last word boundary (" ") that fits, if any."""
    pieces = []
    while len(phonemes) > budget:
        cut = next((i + 1 for i in range(budget - 1, budget // 2, -1) if phonemes[i] == " "), budget)
        pieces.append(phonemes[:cut])
        phonemes = phonemes[cut:]
    return pieces + [phonemes] if phonemes else pieces


def _split_first_clause(phonemes: list[str]) -> list[list[str]]:
    """A long first sentence split after its first clause (", ") so streaming starts sooner."""
    if len(phonemes) < _SPLIT_MIN_PHONEMES:
        return [phonemes]
    for i in range(_CLAUSE_MIN_PHONEMES, len(phonemes) - _CLAUSE_MIN_PHONEMES):
        if phonemes[i] in _CLAUSE_MARKS and phonemes[i + 1] == " ":
            return [phonemes[: i + 1], phonemes[i + 2 :]]
    return [phonemes]


def _normalize(audio: np.ndarray) -> np.ndarray:
    """Peak to full scale, as piper's own synthesize() does (normalize_audio=True)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak < 1e-8:
        return np.zeros_like(audio, dtype=np.float32)
    return np.clip(audio / peak, -1.0, 1.0).astype(np.float32)


def _match_level(audio: np.ndarray, target_rms: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    if rms < _MIN_RMS:
        return audio
    peak = float(np.max(np.abs(audio)))
    gain = min(target_rms / rms, 1.0 / peak)  # never clip
    return (audio * gain).astype(np.float32)
