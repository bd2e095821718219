"""Benchmark of the runtime's fishspeech engine against fish-speech 1.2's own tools.api, in one run, on the CPU.

Stand-in weights: the `real`-size fish-speech-1.2-sft stand-in (tests/support/standins/fish12.py: the
published architecture and file sizes, random values). Speed on it is real; its audio is noise, and random
weights never end a sentence by themselves, so every sentence generates exactly --tokens-per-sentence
semantic tokens (the default, 2 x 105 = 210 tokens, is about 10 s of audio).

Measured, each in its own process (so peak RSS is its own):
  (a) fish-speech 1.2's tools.api as seed 000 runs it: its module's `inference()` with the models its
      __main__ loads (`--device cpu`, no `--half`: bf16), streaming as /v1/invoke does. Its HTTP layer and
      its warm-up (which generates until <|im_end|> or 4096 tokens, i.e. forever on random weights) are left
      out; a warm-up of 8 tokens stands in for the latter ((c) warms up as the server does). tools.api
      imports tools.auto_rerank, which imports funasr at module level; /v1/invoke never calls it, so an
      empty funasr module stands in for that import.
  (b) tools.api has no fp32 switch: `--half` selects fp16, so there is no (b) row.
  (c) the bundled engine (imgbuild_runtime.fish_engine) at the precision it chooses on this CPU.
Each with no reference voice, then a reference voice twice (first and second request for it).
Printed per request: seconds of compute per second of audio (RTF), time to first audio, semantic tokens
per second, and per process the peak RSS; then (a)/(c), and the memory-bandwidth bound: weight bytes read per
token over this machine's copy bandwidth (a STREAM-like numpy copy, bytes read + written per second).

Run in .venv-torch (scripts/setup_torch.sh): .venv-torch/bin/python bench/bench_fish.py [--skip-fish]
"""

from __future__ import annotations

import argparse
import json
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
SAMPLING = {"top_p": 0.7, "repetition_penalty": 1.2, "temperature": 0.7, "chunk_length": 100}


def reference_wav(path: Path, seconds: float = 3.0, rate: int = 44100) -> Path:
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    voice = 0.2 * np.sin(2 * np.pi * 180 * t + 3 * np.sin(2 * np.pi * 4 * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
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
        return sum(p.numel() * p.element_size() for p in module.parameters())

    slow = sum(size(layer) for layer in model.layers) + size(model.output) + size(model.norm)
    fast = sum(size(layer) for layer in model.fast_layers) + size(model.fast_output) + size(model.fast_norm)
    return slow + model.config.num_codebooks * fast


class Timer:
    """Wraps a function to add up its wall time (instrumentation only; the call is unchanged)."""

    def __init__(self, fn):  # type: ignore[no-untyped-def]
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


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
    for label, reference in (("no reference", None), ("reference, 1st", ref), ("reference, 2nd", ref)):
        encode.seconds = decode.seconds = 0.0
        req = api.InvokeRequest(text=TEXT, reference_audio=str(reference) if reference else None,
                                reference_text=REF_TEXT if reference else None, max_new_tokens=tokens,
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
        requests.append(row(label, total, first, samples / rate, codes, total - encode.seconds - decode.seconds,
                            encode.seconds, decode.seconds))
    return {"name": "(a) fish-speech tools.api, bf16", "load": load, "requests": requests,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child_engine(checkpoint: Path, ref: Path, tokens: int, threads: int, profile: bool) -> dict:
    """(c): the bundled engine, with the server's reference cache in front of it."""
    import torch

    from imgbuild_runtime.engine import SynthesisOptions
    from imgbuild_runtime.fish_engine import FishSpeechEngine
    from imgbuild_runtime.refcache import ReferenceCache
    from imgbuild_runtime.voices import ReferencePair

    started = time.perf_counter()
    engine = FishSpeechEngine(checkpoint, threads=threads, precision=os.environ.get("BENCH_PRECISION", "auto"))
    engine.load()
    engine.warmup()  # as the server does before it answers
    load = time.perf_counter() - started
    generator, _ = engine._loaded()
    cache = ReferenceCache(engine.encoder_id(), Timer(engine.encode_reference), None)
    encode = cache._encode
    decode = Timer(engine.decode)
    engine.decode = decode  # type: ignore[method-assign]
    lab = ref.with_suffix(".lab")
    lab.write_text(REF_TEXT, encoding="utf-8")
    pair = ReferencePair(audio=ref, text=lab)
    requests = []
    for label, use_ref in (("no reference", False), ("reference, 1st", True), ("reference, 2nd", True)):
        encode.seconds = decode.seconds = 0.0
        started = time.perf_counter()
        refs = [cache.get_pair(pair)] if use_ref else []
        first = None
        samples = 0
        options = SynthesisOptions(sampling={**SAMPLING, "max_new_tokens": tokens}, low_latency=True)
        for chunk in engine.synthesize(TEXT, refs, options, threading.Event()):
            first = first if first is not None else time.perf_counter() - started
            samples += chunk.size
        total = time.perf_counter() - started
        requests.append(row(label, total, first, samples / engine.sample_rate, samples // 1024,
                            total - encode.seconds - decode.seconds, encode.seconds, decode.seconds))
    result = {"name": f"(c) bundled engine, {engine.precision} (decoder {engine.decoder_precision})", "load": load, "requests": requests,
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


def row(label: str, total: float, first: float | None, audio: float, codes: int, generate: float,
        encode: float, decode: float) -> dict:
    return {"request": label, "total": total, "first_audio": first, "audio_seconds": audio, "tokens": codes,
            "rtf": total / audio if audio else float("inf"), "tokens_per_s": codes / generate if generate else 0.0,
            "encode": encode, "decode": decode}


def run_child(kind: str, args: argparse.Namespace, checkpoint: Path, ref: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--checkpoint", str(checkpoint), "--ref", str(ref),
           "--tokens-per-sentence", str(args.tokens_per_sentence), "--threads", str(args.threads)]
    if args.profile:
        cmd.append("--profile")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def show(result: dict) -> None:
    print(f"\n{result['name']}: load {result['load']:.1f} s, peak RSS {result['peak_rss'] / 2**20:.0f} MiB")
    print(f"  {'request':16} {'RTF':>7} {'1st audio':>10} {'tok/s':>7} {'tokens':>6} {'audio s':>8} "
          f"{'encode s':>9} {'decode s':>9} {'total s':>8}")
    for r in result["requests"]:
        first = f"{r['first_audio']:.1f}" if r["first_audio"] is not None else "-"
        print(f"  {r['request']:16} {r['rtf']:7.2f} {first:>10} {r['tokens_per_s']:7.2f} {r['tokens']:6d} "
              f"{r['audio_seconds']:8.2f} {r['encode']:9.2f} {r['decode']:9.2f} {r['total']:8.1f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", choices=("fish-api", "engine"))
    p.add_argument("--checkpoint", type=Path, help="A real-size stand-in folder (made when not given).")
    p.add_argument("--ref", type=Path)
    p.add_argument("--tokens-per-sentence", type=int, default=105)
    p.add_argument("--threads", type=int, default=0)
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
                                      args.profile)))
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
    bandwidth = copy_bandwidth()
    results = [run_child("engine", args, checkpoint, ref)]
    show(results[0])
    sys.stdout.flush()
    if not args.skip_fish:
        results.append(run_child("fish-api", args, checkpoint, ref))
        show(results[1])
    ours = results[0]
    bound = bandwidth / ours["weight_bytes_per_token"]
    print(f"\ncopy bandwidth {bandwidth / 1e9:.1f} GB/s; weights read per token ({ours['precision']}) "
          f"{ours['weight_bytes_per_token'] / 1e9:.2f} GB -> bound {bound:.2f} tokens/s")
    for r in ours["requests"]:
        print(f"  (c) {r['request']:16} {r['tokens_per_s']:.2f} tokens/s = {100 * r['tokens_per_s'] / bound:.0f} % "
              f"of the bound; first audio {r['first_audio']:.1f} s")
    if len(results) == 2:
        for a, c in zip(results[1]["requests"], ours["requests"]):
            print(f"  (a)/(c) {a['request']:16} compute per audio second {a['rtf'] / c['rtf']:.1f}x, "
                  f"first audio {a['first_audio'] / c['first_audio']:.1f}x, "
                  f"tokens/s {c['tokens_per_s'] / a['tokens_per_s']:.1f}x")
        print(f"  (a) fish-speech tools.api semantic tokens/s: "
              + ", ".join(f"{r['request']} {r['tokens_per_s']:.2f}" for r in results[1]["requests"]))
    for line in ours.get("profile", []):
        print("  " + line)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        print(json.dumps({"bandwidth": bandwidth, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
