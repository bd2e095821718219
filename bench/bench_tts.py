"""Benchmark of the runtime TTS server against piper's own command line, measured in the same run.

For each voice (the generated tiny test voice, plus a real piper voice given with --voice or
IMGBUILD_BENCH_VOICE), the same text goes through:
- piper's command line (`python -m piper`, a new process per run: start, load, synthesize), to a WAV file and
  with --output-raw (time to its first audio byte): what a user without a server runs;
- piper's library in this process (PiperVoice.load with its default session, synthesize_wav): the synthesis
  alone, without process start and model load, the fair baseline for the server's own overhead;
- the server (`python -m imgbuild_runtime`, loaded once): a whole WAV, and `stream: true` (time to the first
  audio byte).
Printed: real-time factor (seconds of compute per second of audio; < 1 is faster than real time), time to
first audio, and the server's figures as ratios of the CLI's. Medians of --repeat runs.

Run: python bench/bench_tts.py [--voice VOICE.onnx] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import httpx

TEXT = (
    "The disc was burned on a quiet evening, and it still reads back without a single error. "
    "Every volume carries its own checksum, so a scratch shows up before it costs anything. "
    "The server starts in a few seconds and speaks as soon as the first sentence is ready. "
    "Nothing here needs a graphics card; the processor does all of the work. "
    "Slow networks are not a problem either, because everything travels on the disc."
)


def median(values: list[float]) -> float:
    return statistics.median(values)


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def run_cli(model: Path, text: str, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "piper", "-m", str(model), "-f", str(out), "--", text],
                   check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - started


class Library:
    """piper's library in this process, loaded once, as its CLI loads it (PiperVoice.load, default session)."""

    def __init__(self, model: Path) -> None:
        from piper import PiperVoice

        self.voice = PiperVoice.load(model)
        self.run(TEXT)  # the first run pays for lazy initialisation, as the server's warm-up does

    def run(self, text: str) -> tuple[float, float]:
        started = time.perf_counter()
        samples = rate = 0
        for chunk in self.voice.synthesize(text):
            samples += chunk.audio_int16_array.size
            rate = chunk.sample_rate
        return time.perf_counter() - started, samples / rate


def cli_first_byte(model: Path, text: str) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "piper", "-m", str(model), "--output-raw", "--", text],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    elapsed = time.perf_counter() - started
    proc.stdout.read()
    proc.wait()
    if not first:
        raise RuntimeError("piper --output-raw produced no audio")
    return elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int) -> tuple[subprocess.Popen, float]:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "imgbuild_runtime", "--model", str(model), "--host", "127.0.0.1",
                             "--port", str(port), "--no-disk-cache", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, time.perf_counter() - started
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the server exited while loading")
        time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("the server did not become healthy")


def server_whole(client: httpx.Client, text: str) -> tuple[float, float]:
    started = time.perf_counter()
    response = client.post("/v1/audio/speech", json={"input": text, "response_format": "pcm", "stream": False})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    rate = int(response.headers["x-sample-rate"])
    return elapsed, len(response.content) / 2 / rate


def server_stream(client: httpx.Client, text: str) -> tuple[float, float]:
    started = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/audio/speech", json={"input": text, "stream": True, "response_format": "wav"}) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            if chunk and first is None:
                first = time.perf_counter() - started
    return first or float("nan"), time.perf_counter() - started


def bench_voice(name: str, model: Path, repeat: int, work: Path) -> dict[str, float | str]:
    """Each round runs every variant once, in turn, so load from other processes hits them alike."""
    out = work / f"{name}.wav"
    library = Library(model)
    port = free_port()
    proc, load_s = start_server(model, port)
    cli_rtf, cli_ttfb, lib_rtf, srv_rtf, srv_ttfb, srv_stream_total = [], [], [], [], [], []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            server_whole(client, TEXT)  # untimed: first-request effects are not what we measure
            for _ in range(repeat):
                cli_rtf.append(run_cli(model, TEXT, out) / wav_seconds(out))
                cli_ttfb.append(cli_first_byte(model, TEXT))
                elapsed, seconds = library.run(TEXT)
                lib_rtf.append(elapsed / seconds)
                elapsed, seconds = server_whole(client, TEXT)
                srv_rtf.append(elapsed / seconds)
                first, total = server_stream(client, TEXT)
                srv_ttfb.append(first)
                srv_stream_total.append(total)
    finally:
        proc.terminate()
        proc.wait(10)
    return {
        "voice": name,
        "audio_seconds": round(wav_seconds(out), 3),
        "cli_rtf": round(median(cli_rtf), 5),
        "cli_first_audio_s": round(median(cli_ttfb), 4),
        "library_rtf": round(median(lib_rtf), 5),
        "server_load_s": round(load_s, 3),
        "server_rtf": round(median(srv_rtf), 5),
        "server_first_audio_s": round(median(srv_ttfb), 4),
        "server_stream_total_s": round(median(srv_stream_total), 4),
        "ratio_rtf_server_vs_cli": round(median(srv_rtf) / median(cli_rtf), 4),
        "ratio_rtf_server_vs_library": round(median(srv_rtf) / median(lib_rtf), 4),
        "ratio_first_audio_server_vs_cli": round(median(srv_ttfb) / median(cli_ttfb), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voice", type=Path, default=os.environ.get("IMGBUILD_BENCH_VOICE"),
                        help="A real piper voice (.onnx with its .onnx.json beside it).")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from imgbuild_runtime.testvoice import write_test_voice

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-tts-") as tmp:
        work = Path(tmp)
        voices = [("test-voice", write_test_voice(work / "voice").model)]
        if args.voice:
            voices.append((Path(args.voice).name.removesuffix(".onnx"), Path(args.voice)))
        for name, model in voices:
            results.append(bench_voice(name, model, args.repeat, work))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"text: {len(TEXT)} characters, {TEXT.count('. ') + 1} sentences; medians of {args.repeat} runs")
    for r in results:
        print(f"\nvoice {r['voice']}: {r['audio_seconds']} s of audio")
        print(f"  piper CLI : RTF {r['cli_rtf']} (start+load+synthesis), first audio {r['cli_first_audio_s']} s")
        print(f"  piper lib : RTF {r['library_rtf']} (synthesis only, model already loaded)")
        print(f"  server    : load {r['server_load_s']} s once, RTF {r['server_rtf']}, "
              f"first audio (stream) {r['server_first_audio_s']} s, stream total {r['server_stream_total_s']} s")
        print(f"  ratios    : RTF server/CLI {r['ratio_rtf_server_vs_cli']}, "
              f"server/library {r['ratio_rtf_server_vs_library']}, "
              f"first audio server/CLI {r['ratio_first_audio_server_vs_cli']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
