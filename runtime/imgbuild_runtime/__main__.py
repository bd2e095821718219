"""Command line: `python -m imgbuild_runtime --model VOICE.onnx [--ref-data ref_data] [--port 8080] ...`.

Every flag has an environment default IMGBUILD_TTS_<FLAG> (e.g. IMGBUILD_TTS_MODEL, IMGBUILD_TTS_PORT), so an
image can set paths with ENV and keep a plain CMD. Exits 1 when the model fails to load (the container stops
and its log says why), 0 on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .cpu import physical_cores
from .fish_engine import PRECISIONS
from .state import ENGINES, ServerConfig


def find_model(path: Path, engine: str) -> Path:
    """A model file, or the only .onnx file in a checkpoint folder (recipes name folders)."""
    if path.is_dir() and engine == "piper":
        found = sorted(path.rglob("*.onnx"))
        if len(found) != 1:
            names = ", ".join(str(p) for p in found) or "none"
            raise SystemExit(f"error: {path}: expected exactly one .onnx voice, found {names}; pass the file")
        return found[0]
    if not path.exists():
        raise SystemExit(f"error: model {path} does not exist")
    return path


def _env_defaults(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        value = os.environ.get(f"IMGBUILD_TTS_{action.dest.upper()}")
        if value is None:
            continue
        if action.nargs == 0:  # store_true flags
            parser.set_defaults(**{action.dest: value.lower() in ("1", "true", "yes")})
        else:
            parser.set_defaults(**{action.dest: action.type(value) if action.type else value})
            action.required = False


def parse_args(argv: list[str] | None = None) -> tuple[ServerConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m imgbuild_runtime", description="CPU text-to-speech HTTP server.")
    p.add_argument("--model", type=Path, required=True, help="Voice model file, or a folder holding one.")
    p.add_argument("--model-config", type=Path, help="Model config (piper: default MODEL.onnx.json).")
    p.add_argument("--engine", choices=ENGINES, default="piper")
    p.add_argument("--ref-data", type=Path, default=Path("ref_data"),
                   help="Reference voices: ref_data/<speaker>/<emotion>/<name>.wav + <name>.lab.")  # fmt: skip
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
                   / "imgbuild-tts" / "references", help="Where encoded references are kept.")  # fmt: skip
    p.add_argument("--no-disk-cache", action="store_true", help="Keep encoded references in memory only.")
    p.add_argument("--host", default="127.0.0.1",
                   help="Address to listen on; images pass 0.0.0.0 so a published port reaches it.")  # fmt: skip
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--threads", type=int, default=0, help="Inference threads; default: physical cores.")
    p.add_argument("--max-chars", type=int, default=4096, help="Longest text accepted.")
    p.add_argument("--queue-size", type=int, default=8, help="Requests running or waiting; more get 429.")
    p.add_argument("--timeout", type=float, default=300.0, help="Seconds a request may wait and run.")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="fishspeech: auto picks bf16 only on CPUs with native bf16 where it measures faster; "
                   "int8 quantizes the generator's linear layers (faster, changes its numbers).")  # fmt: skip
    p.add_argument("--no-preencode", action="store_true", help="Encode references on first use, not at start.")
    p.add_argument("--voice-map", default="",
                   help="OpenAI voice names -> voices: 'alloy=2r/happy,echo=default' or a file of NAME=VOICE "
                   "lines. Names left out mean the default voice.")  # fmt: skip
    p.add_argument("--api-key", default=None,
                   help="Require 'Authorization: Bearer KEY' (OpenAI clients send their api_key so); "
                   "better set through IMGBUILD_TTS_API_KEY than on the command line.")  # fmt: skip
    p.add_argument("--docs", action="store_true", help="Serve /docs and /openapi.json.")
    p.add_argument("--max-connections", type=int, default=64, help="Open connections; more get 503.")
    p.add_argument("--header-timeout", type=float, default=10.0, help="Seconds to send a request's headers.")
    p.add_argument("--body-timeout", type=float, default=30.0, help="Seconds between parts of a request body.")
    p.add_argument("--max-reference-seconds", type=float, default=60.0,
                   help="Longest uploaded reference recording (/v1/invoke).")  # fmt: skip
    p.add_argument("--cache-max-mb", type=int, default=256, help="Disk cache of encoded references, LRU.")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=__version__)
    _env_defaults(p)
    args = p.parse_args(argv)
    for name in ("threads", "max_chars", "queue_size", "timeout", "max_connections", "header_timeout",
                 "body_timeout", "max_reference_seconds", "cache_max_mb"):  # fmt: skip
        if getattr(args, name) < (0 if name == "threads" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive")
    config = ServerConfig(
        model=find_model(args.model, args.engine),
        engine=args.engine,
        model_config=args.model_config,
        ref_data=args.ref_data,
        cache_dir=None if args.no_disk_cache else args.cache_dir,
        threads=args.threads or physical_cores(),
        max_chars=args.max_chars,
        max_pending=args.queue_size,
        request_timeout=args.timeout,
        preencode=not args.no_preencode,
        precision=args.precision,
        voice_map=_voice_map(p, args.voice_map),
        api_key=args.api_key or None,
        docs=args.docs,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_reference_seconds=args.max_reference_seconds,
        cache_max_bytes=args.cache_max_mb * 1024 * 1024,
    )
    return config, args


def _voice_map(parser: argparse.ArgumentParser, value: str) -> tuple[tuple[str, str], ...]:
    from .voices import parse_voice_map

    source = "--voice-map"
    if value and "=" not in value:
        try:
            source, value = value, Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"--voice-map {value}: cannot read: {exc}")
    try:
        return tuple(parse_voice_map(value, source).items())
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    from .server import serve

    config, args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(config, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
