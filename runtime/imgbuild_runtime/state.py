"""Server settings and the loaded state: engine, voices, reference cache, queue; loading off the event loop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .engine import Engine, EngineInfo
from .errors import NotReady, TTSError
from .refcache import ReferenceCache
from .scheduler import Scheduler
from .voices import VoiceCatalog, scan_ref_data

log = logging.getLogger(__name__)

ENGINES = ("piper", "sparktts", "fishspeech")
# Names OpenAI clients send; accepted as "the loaded model".
MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


@dataclass(frozen=True)
class ServerConfig:
    model: Path
    engine: str = "piper"
    model_config: Path | None = None
    ref_data: Path | None = None
    cache_dir: Path | None = None
    threads: int = 1
    max_chars: int = 4096
    max_pending: int = 8
    request_timeout: float = 300.0
    max_body_bytes: int = 32 * 1024 * 1024
    preencode: bool = True  # encode every ref_data reference while loading, so no request pays for it
    precision: str = "auto"  # fishspeech: auto (by CPU features and a measurement), fp32 or bf16
    voice_map: tuple[tuple[str, str], ...] = ()  # extra or changed aliases: ("alloy", "2r/happy"), ...
    api_key: str | None = None  # when set, requests need `Authorization: Bearer <key>` (not /health)
    docs: bool = False  # serve /docs and /openapi.json
    max_reference_chars: int = 1000  # /v1/invoke reference_text
    max_reference_seconds: float = 60.0  # decoded length of an uploaded reference recording
    cache_max_bytes: int = 256 * 1024 * 1024  # encoded references on disk; least recently used go first
    header_timeout: float = 10.0  # seconds a connection may take to send a request's headers
    body_timeout: float = 30.0  # seconds the server waits for each part of a request body
    max_connections: int = 64  # open connections plus running requests; more get 503

    def to_json(self) -> dict[str, object]:
        shown = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        shown["api_key"] = "set" if self.api_key else None  # the log must not hold the key
        shown["voice_map"] = dict(self.voice_map)
        return shown


def make_engine(config: ServerConfig) -> Engine:
    if config.engine == "piper":
        from .piper_engine import PiperEngine

        return PiperEngine(config.model, config.threads, config.model_config)
    if config.engine == "sparktts":
        # Imported here: SparkTTS needs torch and transformers, which a piper-only image does not have.
        from .spark_engine import SparkEngine

        return SparkEngine(config.model, config.threads)
    if config.engine == "fishspeech":
        # Imported here too: fish-speech needs torch and its own source tree.
        from .fish_engine import FishSpeechEngine

        return FishSpeechEngine(config.model, config.threads, config.precision)
    raise ValueError(f"unknown engine {config.engine!r}; known: {', '.join(ENGINES)}")


@dataclass
class ServerState:
    config: ServerConfig
    engine: Engine
    scheduler: Scheduler
    on_load_failed: Callable[[BaseException], None] | None = None
    ready: bool = False
    error: str | None = None
    loaded_at: float = 0.0
    info: EngineInfo | None = None
    catalog: VoiceCatalog | None = None
    cache: ReferenceCache | None = None
    load_seconds: float = 0.0
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start_loading(self) -> None:
        self._thread = threading.Thread(target=self._load, name="tts-load", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        started = time.monotonic()
        try:
            log.info("loading %s model %s with %d threads", self.config.engine, self.config.model, self.config.threads)
            self.engine.load()
            self.info = self.engine.info()
            self.catalog = scan_ref_data(self.config.ref_data, self.info.speakers).with_aliases(
                dict(self.config.voice_map)
            )
            for problem in self.catalog.problems:
                log.warning("ref_data: %s", problem)
            self.cache = ReferenceCache(
                self.engine.encoder_id(),
                self.engine.encode_reference,
                self.config.cache_dir,
                max_disk_bytes=self.config.cache_max_bytes,
                max_seconds=self.config.max_reference_seconds,
                root=self.config.ref_data,
            )
            if self.config.preencode:
                self._preencode()
            log.info("warming up")
            self.engine.warmup()
        except BaseException as exc:  # noqa: BLE001 - reported through /health and the callback
            self.error = self._hide_paths(f"{type(exc).__name__}: {exc}")
            log.exception("loading the model failed")
            if self.on_load_failed is not None:
                self.on_load_failed(exc)
            return
        self.load_seconds = time.monotonic() - started
        self.loaded_at = time.time()
        self.ready = True
        log.info("ready in %.1f s: %d voices", self.load_seconds, len(self.catalog.voices))

    def _hide_paths(self, text: str) -> str:
        """The server's folders out of a message that /health shows (the log keeps the full one)."""
        for folder in (self.config.model.parent, self.config.ref_data, self.config.cache_dir):
            if folder is not None and str(folder) not in ("", "."):
                text = text.replace(f"{folder}/", "")
        return text

    def _preencode(self) -> None:
        assert self.catalog is not None and self.cache is not None
        for voice in self.catalog.voices.values():
            for pair in voice.references:
                try:
                    self.cache.get_pair(pair)
                except TTSError as exc:
                    log.warning("voice %s: %s", voice.name, exc.message)

    def wait_loaded(self, timeout: float) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.ready

    def require_ready(self) -> tuple[EngineInfo, VoiceCatalog, ReferenceCache]:
        if not self.ready or self.info is None or self.catalog is None or self.cache is None:
            raise NotReady(self.error and f"the model failed to load: {self.error}" or "the model is still loading")
        return self.info, self.catalog, self.cache

    def health(self) -> tuple[int, dict[str, object]]:
        if not self.ready or self.info is None:
            status = "failed" if self.error else "loading"
            return 503, {"status": status, "engine": self.config.engine, "error": self.error}
        body: dict[str, object] = {"status": "ok", **self.info.to_json()}
        body["voices"] = len(self.catalog.voices) if self.catalog else 0
        body["queue"] = self.scheduler.state().to_json()
        body["reference_cache"] = self.cache.stats().to_json() if self.cache else None
        body["load_seconds"] = round(self.load_seconds, 3)
        return 200, body
