"""Benchmark of the runtime's fishspeech engine against fish-speech 1.2's own tools.api, in one run, on the CPU.

Stand-in weights: the `real`-size fish-speech-1.2-sft stand-in (tests/support/standins/fish12.py: the
published architecture and file sizes, random values). Speed on it is real; its audio is noise, and random
weights never end a sentence by themselves, so every sentence generates exactly --tokens-per-sentence
semantic tokens, the last of which ends it and is not audio (the default, 2 x 105 = 210 tokens, makes
2 x 104 x 1024 samples, 4.8 s of 44.1 kHz audio).

Measured, each in its own process (so peak RSS is its own):
  (a) fish-speech 1.2's tools.api as seed 000 runs it: its module's `inference()` with the models its
      __main__ loads (`--device cpu`, no `--half`: bf16), streaming as /v1/invoke does. Its HTTP layer and
      its warm-up (which generates until <|im_end|> or 4096 tokens, i.e. forever on random weights) are left
      out; a warm-up of 8 tokens stands in for the latter ((c) warms up as the server does). tools.api
      imports tools.auto_rerank, which imports funasr at module level; /v1/invoke never calls it, so an
      empty funasr module stands in for that import.
  (b) tools.api has no fp32 switch: `--half` selects fp16, so there is no (b) row.
  (c) the bundled engine (imgbuild_runtime.fish_engine) at the precision it chooses on this CPU (auto), and
      again at each precision --engine-precisions adds (default: int8, which the engine uses only when asked).
Each side first serves one unmeasured request of the same size with another reference voice, which pays
what only a process's first request pays (librosa's first load in (a), the decoder's kernels at this length,
caches growing); then the measured ones: no reference voice, then a new reference voice twice. "reference,
1st" is the first request with that voice (both sides encode it; (a) does on every request), "reference, 2nd"
the same voice again ((c) takes its codes from the reference cache and its prompt's keys and values from the
generation cache). Printed per request: seconds of compute per second of audio (RTF), time to first audio
and to the end of the first sentence's compute (reference encoding, the sentence's generation and its
decoding), semantic tokens per second, and per process the peak RSS; then (a)/(c), and the memory-bandwidth bound: weight bytes read per
token over this machine's copy bandwidth (a STREAM-like numpy copy, bytes read + written per second).

Run in .venv-torch (scripts/setup_torch.sh): .venv-torch/bin/python bench/bench_fish.py [--skip-fish]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "runtime"))

TEXT = ("The disc was burned on a quiet evening, and it still reads back without a single error. "
        "Every volume carries its own checksum, so a scratch shows up before it costs anything.")
REF_TEXT = "This recording is the voice that the model should imitate."
WARMUP_REF_TEXT = "Another voice serves the request that warms the process up."
SAMPLING = {"top_p": 0.7, "repetition_penalty": 1.2, "temperature": 0.7, "chunk_length": 100}


def reference_wav(path: Path, seconds: float = 3.0, rate: int = 44100, pitch: float = 180) -> Path:
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    voice = 0.2 * np.sin(2 * np.pi * pitch * t + 3 * np.sin(2 * np.pi * 4 * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    soundfile.write(path, voice.astype(np.float32), rate)
    return path


def copy_bandwidth(megabytes: int = 256, rounds: int = 5) -> float:
    """Bytes read + written per second by a numpy copy of a buffer far larger than the caches (best round)."""
    src = np.ones(megabytes * (1 << 20) // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return 2 * src.nbytes / best


def weight_bytes_per_token(model) -> int:  # type: ignore[no-untyped-def]
    """Weights read to make one token: the slow layers and output once, the fast layers once per codebook."""
    def size(module) -> int:  # type: ignore[no-untyped-def]
        total = 0
        for m in module.modules():
            weight = getattr(m, "weight", None)
            if callable(weight):  # torch's dynamic int8 linear: int8 weights, one fp64 scale and zero point a row
                q = weight()
                total += q.numel() * q.element_size() + q.size(0) * 16
                bias = m.bias()
                total += 0 if bias is None else bias.numel() * bias.element_size()
            else:
                total += sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
        return total

    slow = sum(size(layer) for layer in model.layers) + size(model.output) + size(model.norm)
    fast = sum(size(layer) for layer in model.fast_layers) + size(model.fast_output) + size(model.fast_norm)
    return slow + model.config.num_codebooks * fast


class Timer:
    """Wraps a function to add up its wall time and note when each call ended (instrumentation only)."""

    def __init__(self, fn):  # type: ignore[no-untyped-def]
        self.fn, self.seconds, self.ends = fn, 0.0, []

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.ends.append(time.perf_counter())
            self.seconds += self.ends[-1] - started

    def reset(self) -> None:
        self.seconds, self.ends = 0.0, []


def requests_to_measure(ref: Path) -> list[tuple[str, Path | None, str | None]]:
    """(label, reference audio, its text): the unmeasured warm-up with another voice, then the measured ones."""
    warm = reference_wav(ref.with_name("warmup-ref.wav"), seconds=2.5, pitch=240)
    return [("warm-up", warm, WARMUP_REF_TEXT), ("no reference", None, None),
            ("reference, 1st", ref, REF_TEXT), ("reference, 2nd", ref, REF_TEXT)]


def child_fish_api(checkpoint: Path, ref: Path, tokens: int, threads: int) -> dict:
    """(a): tools.api's inference() as its __main__ sets it up, bf16."""
    import torch

    torch.set_num_threads(threads)
    sys.modules.setdefault("funasr", types.ModuleType("funasr"))
    sys.modules["funasr"].AutoModel = type("AutoModel", (), {})  # type: ignore[attr-defined]
    for name in ("funasr.models", "funasr.models.seaco_paraformer", "funasr.models.seaco_paraformer.model"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["funasr.models.seaco_paraformer.model"].SeacoParaformer = type("SeacoParaformer", (), {})  # type: ignore[attr-defined]
    from imgbuild_runtime.fish_engine import import_fish_speech

    import_fish_speech()
    import tools.api as api

    started = time.perf_counter()
    api.args = types.SimpleNamespace(precision=torch.bfloat16, compile=False, half=False)
    api.llama_queue = api.launch_thread_safe_queue(checkpoint_path=str(checkpoint), device="cpu",
                                                   precision=torch.bfloat16, compile=False)
    api.decoder_model = api.load_decoder_model(config_name="firefly_gan_vq",
                                               checkpoint_path=str(next(checkpoint.glob("firefly-gan-vq-*.pth"))),
                                               device="cpu")
    # Its own warm-up generates until <|im_end|>; a few tokens stand in for it, so neither side's first
    # request pays for first-use initialisation.
    list(api.inference(api.InvokeRequest(text="Hello world.", max_new_tokens=8, ref_json=None, ref_base=None)))
    load = time.perf_counter() - started
    encode, decode = Timer(api.encode_reference), Timer(api.decode_vq_tokens)
    api.encode_reference, api.decode_vq_tokens = encode, decode
    rate = api.decoder_model.spec_transform.sample_rate
    requests = []
    for label, reference, ref_text in requests_to_measure(ref):
        encode.reset()
        decode.reset()
        req = api.InvokeRequest(text=TEXT, reference_audio=str(reference) if reference else None,
                                reference_text=ref_text, max_new_tokens=tokens,
                                streaming=True, ref_json=None, ref_base=None, **SAMPLING)
        started = time.perf_counter()
        first = None
        samples = 0
        for chunk in api.inference(req):
            if len(chunk) > 44 or not chunk.startswith(b"RIFF"):  # the first chunk is the WAV header
                first = first if first is not None else time.perf_counter() - started
                samples += len(chunk) // 2
        total = time.perf_counter() - started
        codes = samples // 1024  # 2 x 512 samples per semantic token
        requests.append(row(label, total, first, decode.ends[0] - started, samples / rate, codes,
                            total - encode.seconds - decode.seconds, encode.seconds, decode.seconds))
    return {"name": "(a) fish-speech tools.api, bf16", "load": load, "warmup": requests.pop(0), "requests": requests,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child_engine(checkpoint: Path, ref: Path, tokens: int, threads: int, profile: bool, precision: str) -> dict:
    """(c): the bundled engine, with the server's reference cache in front of it."""

    from imgbuild_runtime.engine import SynthesisOptions
    from imgbuild_runtime.fish_engine import FishSpeechEngine
    from imgbuild_runtime.refcache import ReferenceCache
    from imgbuild_runtime.voices import ReferencePair

    choices: list[str] = []  # the engine's log lines that say which precision it chose and why
    handler = logging.Handler()
    handler.emit = lambda record: choices.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("imgbuild_runtime.fish_engine").addHandler(handler)
    logging.getLogger("imgbuild_runtime.fish_engine").setLevel(logging.INFO)
    started = time.perf_counter()
    engine = FishSpeechEngine(checkpoint, threads=threads, precision=precision)
    engine.load()
    engine.warmup()  # as the server does before it answers
    load = time.perf_counter() - started
    generator, _ = engine._loaded()
    cache = ReferenceCache(engine.encoder_id(), Timer(engine.encode_reference), None)
    encode = cache._encode
    decode = Timer(engine.decode)
    engine.decode = decode  # type: ignore[method-assign]
    requests = []
    for label, reference, ref_text in requests_to_measure(ref):
        encode.reset()
        decode.reset()
        refs = []
        if reference is not None:
            lab = reference.with_suffix(".lab")
            lab.write_text(ref_text or "", encoding="utf-8")
        started = time.perf_counter()
        if reference is not None:
            refs = [cache.get_pair(ReferencePair(audio=reference, text=lab))]
        first = None
        samples = 0
        options = SynthesisOptions(sampling={**SAMPLING, "max_new_tokens": tokens}, low_latency=True)
        for chunk in engine.synthesize(TEXT, refs, options, threading.Event()):
            first = first if first is not None else time.perf_counter() - started
            samples += chunk.size
        total = time.perf_counter() - started
        requests.append(row(label, total, first, decode.ends[0] - started, samples / engine.sample_rate,
                            samples // 1024, total - encode.seconds - decode.seconds, encode.seconds,
                            decode.seconds))
    result = {"name": f"(c) bundled engine, --precision {precision}: {engine.precision} "
                      f"(decoder {engine.decoder_precision})", "load": load,
              "choices": choices, "warmup": requests.pop(0), "requests": requests,
              "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "weight_bytes_per_token": weight_bytes_per_token(generator.model), "precision": engine.precision}
    if profile:
        result["profile"] = profile_tokens(engine, 8)
    return result


def profile_tokens(engine, tokens: int) -> list[str]:  # type: ignore[no-untyped-def]
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        list(engine.semantic_segments("Profile.", [], {**SAMPLING, "max_new_tokens": tokens}))
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)
    return table.splitlines()


def row(label: str, total: float, first: float | None, first_sentence: float, audio: float, codes: int,
        generate: float, encode: float, decode: float) -> dict:
    return {"request": label, "total": total, "first_audio": first, "first_sentence": first_sentence,
            "audio_seconds": audio, "tokens": codes,
            "rtf": total / audio if audio else float("inf"), "tokens_per_s": codes / generate if generate else 0.0,
            "encode": encode, "decode": decode}


def run_child(kind: str, args: argparse.Namespace, checkpoint: Path, ref: Path, precision: str = "auto") -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--checkpoint", str(checkpoint), "--ref", str(ref),
           "--tokens-per-sentence", str(args.tokens_per_sentence), "--threads", str(args.threads),
           "--precision", precision]
    if args.profile:
        cmd.append("--profile")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def show(result: dict) -> None:
    print(f"\n{result['name']}: load {result['load']:.1f} s, peak RSS {result['peak_rss'] / 2**20:.0f} MiB")
    for line in result.get("choices", []):
        print(f"  {line}")
    print(f"  {'request':16} {'RTF':>7} {'1st audio':>10} {'1st sent.':>10} {'tok/s':>7} {'tokens':>6} "
          f"{'audio s':>8} {'encode s':>9} {'decode s':>9} {'total s':>8}")
    for r in [{**result["warmup"], "request": "(warm-up)"}, *result["requests"]]:
        first = f"{r['first_audio']:.1f}" if r["first_audio"] is not None else "-"
        print(f"  {r['request']:16} {r['rtf']:7.2f} {first:>10} {r['first_sentence']:10.1f} "
              f"{r['tokens_per_s']:7.2f} {r['tokens']:6d} {r['audio_seconds']:8.2f} {r['encode']:9.2f} "
              f"{r['decode']:9.2f} {r['total']:8.1f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", choices=("fish-api", "engine"))
    p.add_argument("--checkpoint", type=Path, help="A real-size stand-in folder (made when not given).")
    p.add_argument("--ref", type=Path)
    p.add_argument("--tokens-per-sentence", type=int, default=105)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precision", default="auto", help=argparse.SUPPRESS)  # a child's
    p.add_argument("--engine-precisions", default="int8",
                   help="Precisions (c) also runs at, comma-separated, after auto; '' for none.")
    p.add_argument("--skip-fish", action="store_true", help="Only (c).")
    p.add_argument("--profile", action="store_true", help="Profile 8 tokens of (c) by operator.")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if not args.threads:
        from imgbuild_runtime.cpu import physical_cores

        args.threads = physical_cores()
    if args.child == "fish-api":
        print(json.dumps(child_fish_api(args.checkpoint, args.ref, args.tokens_per_sentence, args.threads)))
        return 0
    if args.child == "engine":
        print(json.dumps(child_engine(args.checkpoint, args.ref, args.tokens_per_sentence, args.threads,
                                      args.profile, args.precision)))
        return 0

    work = Path(os.environ.get("IMGBUILD_BENCH_DIR", Path(tempfile.gettempdir()) / "imgbuild-bench-fish"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        from tests.support.standins.fish12 import make_fish12

        checkpoint = work / "fish-speech-1.2-sft"
        if not (checkpoint / "model.pth").is_file():
            print(f"making the real-size stand-in in {checkpoint} ...", flush=True)
            make_fish12(checkpoint, "real", seed=0)
    work.mkdir(parents=True, exist_ok=True)
    ref = reference_wav(work / "ref.wav")
    print(f"stand-in weights (random values, real architecture): {checkpoint}")
    print(f"text: 2 sentences x {args.tokens_per_sentence} semantic tokens; threads {args.threads}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    print("each side first serves a request with another voice (warm-up: shown, not compared); '1st sent.' is "
          "when the first sentence's\ncompute ended (reference encoding, its generation, its decoding); "
          "'reference, 1st' is a new voice's first request, '2nd' the same voice again", flush=True)
    bandwidth = copy_bandwidth()
    ours = []
    for precision in ["auto", *filter(None, args.engine_precisions.split(","))]:
        ours.append(run_child("engine", args, checkpoint, ref, precision))
        show(ours[-1])
        sys.stdout.flush()
    fish = None
    if not args.skip_fish:
        fish = run_child("fish-api", args, checkpoint, ref)
        show(fish)
    print(f"\ncopy bandwidth {bandwidth / 1e9:.1f} GB/s")
    for c in ours:
        bound = bandwidth / c["weight_bytes_per_token"]
        print(f"{c['name']}: weights read per token {c['weight_bytes_per_token'] / 1e9:.2f} GB "
              f"-> bound {bound:.2f} tokens/s")
        for r in c["requests"]:
            print(f"  (c) {r['request']:16} {r['tokens_per_s']:.2f} tokens/s = "
                  f"{100 * r['tokens_per_s'] / bound:.0f} % of the bound; first audio {r['first_audio']:.1f} s, "
                  f"first sentence computed {r['first_sentence']:.1f} s, whole request {r['total']:.1f} s")
        if fish is not None:
            for a, r in zip(fish["requests"], c["requests"]):
                print(f"  (a)/(c) {r['request']:16} compute per audio second {a['rtf'] / r['rtf']:.1f}x, "
                      f"first audio {a['first_audio'] / r['first_audio']:.1f}x, "
                      f"tokens/s {r['tokens_per_s'] / a['tokens_per_s']:.1f}x")
        for line in c.get("profile", []):
            print("  " + line)
    if fish is not None:
        print("(a) fish-speech tools.api semantic tokens/s: "
              + ", ".join(f"{r['request']} {r['tokens_per_s']:.2f}" for r in fish["requests"]))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    results = [*ours, *([fish] if fish else [])]
    if args.json:
        print(json.dumps({"bandwidth": bandwidth, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
