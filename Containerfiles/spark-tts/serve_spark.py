"""Serve SparkTTS-0.5B through imgbuild's TTS runtime: `python3 serve_spark.py --model MODEL_DIR [--port 8080]`.

The runtime (imgbuild_runtime) gives the HTTP API, the reference voices from ref_data/, their cache, the
request queue and /health; this script only plugs the SparkTTS engine into it. Exits 1 when the model
fails to load, so the container stops and its log says why.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from spark_engine import SparkEngine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from imgbuild_runtime.cpu import physical_cores
    from imgbuild_runtime.server import serve
    from imgbuild_runtime.state import ServerConfig

    p = argparse.ArgumentParser(prog="serve_spark.py", description="SparkTTS on the CPU, imgbuild's TTS API.")
    p.add_argument("--model", type=Path, required=True, help="SparkTTS model folder (config.yaml, LLM/, BiCodec/).")
    p.add_argument("--ref-data", type=Path, default=Path("ref_data"),
                   help="Reference voices: ref_data/<speaker>/<emotion>/<name>.wav + <name>.lab.")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "imgbuild-tts" / "references")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--threads", type=int, default=0, help="Inference threads; default: physical cores.")
    p.add_argument("--timeout", type=float, default=1800.0, help="Seconds a request may wait and run (CPU is slow).")
    args = p.parse_args(argv)
    if not (args.model / "config.yaml").is_file():
        p.error(f"{args.model} is not a SparkTTS model folder (no config.yaml)")
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threads = args.threads or physical_cores()
    config = ServerConfig(model=args.model, engine=SparkEngine.name, ref_data=args.ref_data,
                          cache_dir=args.cache_dir, threads=threads, request_timeout=args.timeout)
    return serve(config, SparkEngine(args.model, threads), host=args.host, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
