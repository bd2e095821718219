"""fish-speech 1.2 as an engine of imgbuild's TTS runtime (imgbuild_runtime.engine.Engine), on the CPU.

fish-speech 1.2 is a DualARTransformer (text -> semantic tokens, 4 codebooks of 1024 codes, about 21 per
second of audio) plus the firefly VQ-GAN (audio <-> codes, 44.1 kHz). This engine loads both with
fish-speech's own code (`fish_speech` and its `tools/` folder must be importable, as in an image of its
source tree) and serves them with:
- a reference voice encoded once (the firefly encoder) and cached by the server by content hash, instead
  of on every request;
- the precision the CPU runs fastest: fp32 unless the CPU has native bf16 (AVX512-BF16 or AMX) and bf16
  measures faster there, for generation (matrix-vector passes) and for the decoder (convolutions) apart
  (fish-speech's tools.api always runs bf16, which on CPUs without native bf16 is several times slower);
  on request, int8: the generator's linear layers quantized (see quantize_int8), which reads a quarter of
  fp32's bytes per token but changes the model's numbers, so it is never chosen by itself;
- generation in fish_generate.py (caches allocated once, prompt prefixes reused, cancellable per token);
- audio decoded and streamed sentence by sentence.

The model folder is fish-speech's checkpoint folder (`checkpoints/fish-speech-1.2-sft`: config.json,
model.pth, tokenizer files and firefly-gan-vq-fsq-4x1024-42hz-generator.pth). torch is imported only when
the model loads. Served with `python -m imgbuild_runtime --engine fishspeech --model CHECKPOINT_DIR`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .engine import Engine, EncodedReference, EngineInfo, SynthesisOptions
from .errors import BadReferenceAudio

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
DECODER_GLOB = "firefly-gan-vq-*generator.pth"
DECODER_CONFIG = "firefly_gan_vq"
_WARMUP_TOKENS = 8


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def choose_precision(requested: str, flags: set[str], measure: Callable[[], dict[str, float]]) -> tuple[str, str]:
    """(precision, why). `measure` times one matrix-vector pass per precision; called only when it decides."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested, "requested"
    native = sorted(flags.intersection(NATIVE_BF16_FLAGS))
    if not native:
        return "fp32", "the CPU has no native bf16"
    seconds = measure()
    # bf16 only when clearly faster: a close call is noise, and fp32 has no rounding to explain.
    best = "bf16" if seconds["bf16"] < 0.8 * seconds["fp32"] else "fp32"
    timings = ", ".join(f"{name} {value * 1e3:.2f} ms" for name, value in sorted(seconds.items()))
    return best, f"the CPU has {'+'.join(native)}; one layer took {timings}"


def measure_matvec(weights: Sequence[object], rounds: int = 5) -> dict[str, float]:
    """Best time of a batch-1 pass through each of the model's own `weights` (fp32 matrices) in fp32 and in
    bf16, per matrix, each by the kernel generation uses for it (fish_generate.linear: F.linear in fp32,
    torch.mv in bf16).

    The model's matrices, as generation streams them from memory: together more bytes than a CPU cache
    holds, where a few random matrices would be served from a large L3 and flatter fp32. The two precisions
    take turns, so a busy machine slows both alike; the bf16 copies are dropped afterwards."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        matrices = {"fp32": list(weights), "bf16": [w.to(torch.bfloat16) for w in weights]}  # type: ignore[attr-defined]
        inputs = {name: torch.randn(1, ws[0].size(1)).to(ws[0].dtype) for name, ws in matrices.items()}
        passes = {"fp32": F.linear, "bf16": lambda x, w: torch.mv(w, x[0])}
        best = dict.fromkeys(matrices, float("inf"))
        for _ in range(rounds):
            for name, ws in matrices.items():
                started = time.perf_counter()
                for w in ws:
                    passes[name](inputs[name], w)
                best[name] = min(best[name], (time.perf_counter() - started) / len(ws))
    return best


def measure_conv(channels: int = 128, length: int = 5512, kernel: int = 7, rounds: int = 3) -> dict[str, float]:
    """Best time of one decoder-sized 1-D convolution in fp32 and in bf16, taking turns."""
    import torch
    import torch.nn.functional as F

    x, w = torch.randn(1, channels, length), torch.randn(channels, channels, kernel)
    pairs = {"fp32": (x, w), "bf16": (x.to(torch.bfloat16), w.to(torch.bfloat16))}
    best = dict.fromkeys(pairs, float("inf"))
    with torch.inference_mode():
        for _ in range(rounds):
            for name, (xi, wi) in pairs.items():
                started = time.perf_counter()
                F.conv1d(xi, wi, padding=kernel // 2)
                best[name] = min(best[name], time.perf_counter() - started)
    return best


def quantize_int8(model):  # type: ignore[no-untyped-def]
    """The model with each linear layer replaced, in place, by torch's dynamic int8 linear: weights stored as
    int8 with one scale per output channel, each input quantized to int8 as it arrives, products summed in
    int32. Generation reads every weight once per token, so a quarter of fp32's bytes makes it up to about
    three times faster where the CPU has int8 dot-product instructions (AVX512-VNNI, AMX); the results differ
    from fp32 by the quantization error. Embeddings, norms and the KV caches stay fp32."""
    import warnings

    import torch

    quantization = getattr(getattr(torch, "ao", None), "quantization", None)
    if quantization is None or not hasattr(quantization, "quantize_dynamic"):
        raise RuntimeError(f"torch {torch.__version__} has no dynamic quantization; use --precision fp32 or bf16")
    with warnings.catch_warnings():
        # torch marks its eager quantization API as deprecated in favour of a separate package (torchao).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=UserWarning)
        return quantization.quantize_dynamic(model, {torch.nn.Linear: quantization.per_channel_dynamic_qconfig},
                                             dtype=torch.qint8, inplace=True)


def import_fish_speech() -> None:
    """Make fish-speech's `tools` package importable beside its installed `fish_speech` package."""
    if importlib.util.find_spec("fish_speech") is None:
        raise ModuleNotFoundError("No module named 'fish_speech': install fish-speech 1.2's source tree (pip -e)")
    if importlib.util.find_spec("tools") is None:
        import fish_speech

        # A namespace package (no __init__.py in 1.2): its folder comes from __path__.
        sys.path.insert(0, str(Path(list(fish_speech.__path__)[0]).resolve().parent))


def find_decoder(model_dir: Path) -> Path:
    found = sorted(model_dir.glob(DECODER_GLOB))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise FileNotFoundError(f"{model_dir}: expected one {DECODER_GLOB} (the firefly decoder), found {names}")
    return found[0]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FishSpeechEngine(Engine):
    name = "fishspeech"

    def __init__(self, model_dir: Path, threads: int, precision: str = "auto") -> None:
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.requested_precision = precision
        self.precision = precision if precision != "auto" else "fp32"
        self.decoder_precision = self.precision
        self.sample_rate = 44100
        self._decoder_id = ""
        self._generator = None  # fish_generate.Generator after load()
        self._decoder = None  # fish-speech's FireflyArchitecture after load()

    def load(self) -> None:
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_dir} is not a fish-speech checkpoint folder (no config.json)")
        decoder_path = find_decoder(self.model_dir)
        import_fish_speech()
        import torch

        torch.set_num_threads(self.threads)
        from fish_speech.models.text2semantic.llama import BaseTransformer
        from tools.vqgan.inference import load_model as load_decoder

        from .fish_generate import Generator

        model = BaseTransformer.from_pretrained(str(self.model_dir), load_weights=True)
        flags = cpu_flags(Path("/proc/cpuinfo").read_text()) if Path("/proc/cpuinfo").exists() else set()
        self.precision, why = choose_precision(
            self.requested_precision, flags,
            lambda: measure_matvec([layer.feed_forward.w1.weight.float() for layer in model.layers]))  # fmt: skip
        log.info("fish-speech precision %s: %s", self.precision, why)
        # The decoder's convolutions are matrix-matrix work, unlike generation's matrix-vector passes: with
        # native bf16 they can be faster in bf16 where generation is not, so they are measured on their own.
        decoder_requested = "auto" if self.requested_precision == "int8" else self.requested_precision
        self.decoder_precision, why = choose_precision(decoder_requested, flags, measure_conv)
        log.info("firefly decoder precision %s: %s", self.decoder_precision, why)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        model = model.to(dtype=dtype).eval()
        self._generator = Generator(quantize_int8(model) if self.precision == "int8" else model)
        decoder = load_decoder(config_name=DECODER_CONFIG, checkpoint_path=str(decoder_path), device="cpu")
        # Weight norm recomputes every convolution's weight on every call; fold it in once.
        decoder.remove_parametrizations()
        self._decoder = decoder.eval()
        self.sample_rate = int(decoder.spec_transform.sample_rate)
        self._decoder_id = file_sha256(decoder_path)[:16]

    def _loaded(self):  # type: ignore[no-untyped-def]
        if self._generator is None or self._decoder is None:
            raise RuntimeError("fishspeech engine used before load()")
        return self._generator, self._decoder

    def warmup(self) -> None:
        for _ in self.synthesize("Hello world.", (), SynthesisOptions(sampling={"max_new_tokens": _WARMUP_TOKENS}),
                                 threading.Event()):
            pass

    def info(self) -> EngineInfo:
        return EngineInfo(engine=self.name, model=self.model_dir.name, sample_rate=self.sample_rate,
                          threads=self.threads, precision=self.precision, clones_voices=True, speakers=())

    def encoder_id(self) -> str:
        self._loaded()
        return f"fishspeech-firefly-{self._decoder_id}-v1"

    def encode_reference(self, audio: np.ndarray, sample_rate: int, text: str) -> EncodedReference:
        import torch

        _, decoder = self._loaded()
        samples = resample(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, self.sample_rate)
        hop = int(decoder.spec_transform.hop_length) * 2  # one code per two mel frames
        if samples.size < hop:
            raise BadReferenceAudio(f"the reference audio is {samples.size / self.sample_rate:.3f} s long; "
                                    f"it must be at least {hop / self.sample_rate:.3f} s")
        with torch.inference_mode():
            audios = torch.from_numpy(samples)[None, None, :]
            codes = decoder.encode(audios, torch.tensor([audios.shape[2]], dtype=torch.long))[0][0]
        return EncodedReference(text=text, arrays={"codes": codes.numpy().astype(np.int64)},
                                meta={"seconds": round(samples.size / self.sample_rate, 3)})

    def semantic_segments(self, text: str, references: Sequence[EncodedReference], sampling: dict[str, float],
                          cancel: threading.Event | None = None):  # type: ignore[no-untyped-def]
        """Sentence by sentence: fish_generate.Segment (text, codes [codebooks, T], prefilled, generated)."""
        import torch

        from .fish_generate import Sampling

        generator, _ = self._loaded()
        texts = [r.text for r in references]
        tokens = [torch.from_numpy(np.asarray(r.arrays["codes"])).to(torch.int) for r in references]
        return generator.generate_long(text, texts, tokens, Sampling.from_options(dict(sampling)), cancel)

    def decode(self, codes) -> np.ndarray:  # type: ignore[no-untyped-def]
        import torch

        _, decoder = self._loaded()
        # Code 0 of a codebook is fish-speech's padding; a trained model does not emit it, a stand-in can.
        codes = codes.clamp(min=0).long()
        bf16 = self.decoder_precision == "bf16"
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            audio = decoder.decode(indices=codes[None], feature_lengths=torch.tensor([codes.shape[1]])).squeeze()
        return np.clip(audio.float().numpy().reshape(-1), -1.0, 1.0).astype(np.float32)

    def synthesize(self, text: str, references: Sequence[EncodedReference], options: SynthesisOptions,
                   cancel: threading.Event) -> Iterator[np.ndarray]:
        from .fish_generate import Cancelled

        segments = self.semantic_segments(text, references, options.sampling, cancel)
        try:
            for segment in segments:
                if cancel.is_set():
                    return
                if segment.codes.shape[1] == 0:
                    continue
                yield self.decode(segment.codes)
        except Cancelled:
            return


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """To the decoder's rate: soxr's high quality, as librosa.load (fish-speech's loader) does by default."""
    if rate == target:
        return samples
    import soxr

    return soxr.resample(samples, rate, target, quality="HQ").astype(np.float32)
