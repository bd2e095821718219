"""SparkTTS-0.5B as an engine of imgbuild's TTS runtime (imgbuild_runtime.engine.Engine), on the CPU.

SparkTTS is an LLM (Qwen2.5-0.5B with a speech vocabulary) plus the BiCodec audio codec:
- a reference recording is encoded once by BiCodec into "global" tokens (the voice) and "semantic" tokens
  (what is said); the runtime caches them by file hash, so a voice is not re-encoded on every request,
  unlike SparkTTS's own `process_prompt`, which tokenizes the prompt audio on every call;
- the LLM continues a prompt of task token, text and the reference's tokens with semantic tokens;
- BiCodec decodes global + semantic tokens to 16 kHz audio.
Without a reference voice it runs SparkTTS's "voice creation" mode: gender, pitch and speed labels, and the
LLM generates the global tokens as well.

The model folder is SparkTTS's (`pretrained_models/Spark-TTS-0.5B`): config.yaml, LLM/, BiCodec/,
wav2vec2-large-xlsr-53/. The Spark-TTS source tree (its `sparktts` package), torch and transformers must be
importable; they are imported only when the model loads, so the rest of the runtime (and the piper-only
image) does not need them. Served with `python -m imgbuild_runtime --engine sparktts --model MODEL_DIR`.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .engine import Engine, EncodedReference, EngineInfo, SynthesisOptions
from .errors import EngineFailed

# Token strings of SparkTTS's vocabulary (sparktts/utils/token_parser.py and cli/SparkTTS.py).
TASK_TTS = "<|task_tts|>"
TASK_CONTROLLABLE_TTS = "<|task_controllable_tts|>"
LEVELS = ("very_low", "low", "moderate", "high", "very_high")
GENDERS = ("female", "male")
MAX_NEW_TOKENS = 3000  # SparkTTS's own limit per generation (about 60 s of speech at 50 tokens/s)
GLOBAL_TOKENS = 32  # BiCodec's speaker encoder: token_num global tokens describe a voice
_SENTENCE_END = re.compile(r"(?<=[.!?;。！？；])\s*|\n+")
_MAX_SENTENCE_CHARS = 300


def clone_prompt(text: str, global_ids: Sequence[int], semantic_ids: Sequence[int] | None,
                 prompt_text: str | None) -> str:
    """The voice-cloning prompt: with the reference transcript, its semantic tokens continue the prompt."""
    parts = [TASK_TTS, "<|start_content|>"]
    parts += [prompt_text, text] if prompt_text and semantic_ids is not None else [text]
    parts += ["<|end_content|>", "<|start_global_token|>",
              "".join(f"<|bicodec_global_{i}|>" for i in global_ids), "<|end_global_token|>"]
    if prompt_text and semantic_ids is not None:
        parts += ["<|start_semantic_token|>", "".join(f"<|bicodec_semantic_{i}|>" for i in semantic_ids)]
    return "".join(parts)


def control_prompt(text: str, gender: str, pitch: str = "moderate", speed: str = "moderate") -> str:
    """The voice-creation prompt: gender, pitch and speed labels instead of a reference voice."""
    if gender not in GENDERS or pitch not in LEVELS or speed not in LEVELS:
        raise ValueError(f"gender must be one of {GENDERS}, pitch and speed one of {LEVELS}")
    labels = (f"<|gender_{GENDERS.index(gender)}|><|pitch_label_{LEVELS.index(pitch)}|>"
              f"<|speed_label_{LEVELS.index(speed)}|>")
    return "".join([TASK_CONTROLLABLE_TTS, "<|start_content|>", text, "<|end_content|>",
                    "<|start_style_label|>", labels, "<|end_style_label|>"])


def token_ids(generated: str, kind: str) -> list[int]:
    """The ids of `<|bicodec_KIND_N|>` tokens in generated text, in order (kind: global or semantic)."""
    return [int(n) for n in re.findall(rf"bicodec_{kind}_(\d+)", generated)]


def token_budget(sentence: str) -> int:
    """New tokens one sentence may generate: 25 per character (half a second of speech, far slower than
    anyone speaks) plus room for the 32 global tokens, at most MAX_NEW_TOKENS. A model that never emits its
    end token then stops after a sentence's worth of audio instead of a minute of it."""
    return min(MAX_NEW_TOKENS, 100 + 25 * len(sentence))


def speed_level(speed: float) -> str:
    """The runtime's speed factor (1.0 normal) as SparkTTS's nearest speed label."""
    for limit, level in ((0.6, "very_low"), (0.85, "low"), (1.2, "moderate"), (1.6, "high")):
        if speed < limit:
            return level
    return "very_high"


def sentences(text: str) -> list[str]:
    """Text cut at sentence ends (and long sentences at spaces), so audio can stream sentence by sentence
    and no generation runs into MAX_NEW_TOKENS."""
    out: list[str] = []
    for part in (p.strip() for p in _SENTENCE_END.split(text)):
        while len(part) > _MAX_SENTENCE_CHARS:
            cut = part.rfind(" ", 0, _MAX_SENTENCE_CHARS)
            cut = cut if cut > 0 else _MAX_SENTENCE_CHARS
            out.append(part[:cut].strip())
            part = part[cut:].strip()
        if part:
            out.append(part)
    return out


class SparkEngine(Engine):
    name = "sparktts"

    def __init__(self, model_dir: Path, threads: int) -> None:
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.sample_rate = 16000
        self._tokenizer = self._llm = self._codec = None

    def load(self) -> None:
        if not (self.model_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{self.model_dir} is not a SparkTTS model folder (no config.yaml)")
        import torch
        from sparktts.models.audio_tokenizer import BiCodecTokenizer
        from sparktts.utils.file import load_config
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(self.threads)
        device = torch.device("cpu")
        self.sample_rate = int(load_config(self.model_dir / "config.yaml")["sample_rate"])
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir / "LLM")
        self._llm = AutoModelForCausalLM.from_pretrained(self.model_dir / "LLM").to(device).eval()
        self._codec = BiCodecTokenizer(self.model_dir, device=device)

    def warmup(self) -> None:
        """One short pass of each model, so the first request does not pay for lazy initialisation. It
        does not depend on what the LLM generates: a few tokens, then fixed codes through BiCodec."""
        import torch

        inputs = self._tokenizer([control_prompt("Hello.", "female")], return_tensors="pt")  # type: ignore[misc]
        with torch.no_grad():
            self._llm.generate(**inputs, max_new_tokens=8, do_sample=False)  # type: ignore[union-attr]
        self._codec.detokenize(torch.zeros(1, GLOBAL_TOKENS, dtype=torch.long),  # type: ignore[union-attr]
                               torch.zeros(1, 50, dtype=torch.long))

    def info(self) -> EngineInfo:
        return EngineInfo(engine=self.name, model=self.model_dir.name, sample_rate=self.sample_rate,
                          threads=self.threads, precision="float32", clones_voices=True, speakers=GENDERS)

    def encoder_id(self) -> str:
        stat = (self.model_dir / "BiCodec").stat()
        return f"sparktts-bicodec-{int(stat.st_mtime)}-v1"

    def encode_reference(self, audio: np.ndarray, sample_rate: int, text: str) -> EncodedReference:
        import soundfile

        # BiCodec's tokenizer loads (resamples, normalizes) from a file; hand it one.
        fd, path = tempfile.mkstemp(suffix=".wav")
        os.close(fd)
        try:
            soundfile.write(path, audio.astype(np.float32), sample_rate)
            global_ids, semantic_ids = self._codec.tokenize(path)  # type: ignore[union-attr]
        finally:
            os.unlink(path)
        return EncodedReference(text=text, arrays={"global": global_ids.reshape(-1).cpu().numpy().astype(np.int64),
                                                   "semantic": semantic_ids.reshape(-1).cpu().numpy().astype(np.int64)})

    def synthesize(self, text: str, references: Sequence[EncodedReference], options: SynthesisOptions,
                   cancel: threading.Event) -> Iterator[np.ndarray]:
        import torch

        ref = references[0] if references else None
        for sentence in sentences(text):
            if cancel.is_set():
                return
            if ref is not None:
                prompt = clone_prompt(sentence, ref.arrays["global"].tolist(), ref.arrays["semantic"].tolist(),
                                      ref.text or None)
            else:
                gender = options.speaker if options.speaker in GENDERS else "female"
                prompt = control_prompt(sentence, gender, "moderate", speed_level(options.speed))
            inputs = self._tokenizer([prompt], return_tensors="pt")  # type: ignore[misc]
            sampling = dict(options.sampling)
            with torch.no_grad():
                out = self._llm.generate(  # type: ignore[union-attr]
                    **inputs, max_new_tokens=int(sampling.get("max_new_tokens", token_budget(sentence))),
                    do_sample=True,
                    top_k=50, top_p=float(sampling.get("top_p", 0.95)),
                    temperature=float(sampling.get("temperature", 0.8)))
            generated = self._tokenizer.batch_decode(  # type: ignore[union-attr]
                [out[0][inputs.input_ids.shape[1]:]], skip_special_tokens=True)[0]
            semantic = token_ids(generated, "semantic")
            if not semantic:
                continue
            global_ids = ref.arrays["global"].tolist() if ref is not None else token_ids(generated, "global")
            if len(global_ids) != GLOBAL_TOKENS:
                raise EngineFailed(f"the model generated {len(global_ids)} voice (global) tokens; BiCodec needs "
                                   f"{GLOBAL_TOKENS}")
            wav = self._codec.detokenize(  # type: ignore[union-attr]
                torch.tensor(global_ids, dtype=torch.long).unsqueeze(0),
                torch.tensor(semantic, dtype=torch.long).unsqueeze(0))
            yield np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
