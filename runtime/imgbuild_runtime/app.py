"""The HTTP API (FastAPI): OpenAI's speech API, voices, models, health, and fish-speech 1.2's /v1/invoke.

Every error leaves through one of the handlers at the bottom as a JSON body in OpenAI's error shape, with
the status its SDK maps to an exception class (400 BadRequestError, 401 AuthenticationError, 404
NotFoundError, 429 RateLimitError, 5xx InternalServerError); nothing a request sends can stop the server.
A request whose client disconnects, or that passes its deadline, stops its synthesis (scheduler.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .api_models import InvokeRequest, SpeechRequest
from .encoders import CONTENT_TYPES, FORMATS, open_encoder
from .engine import Engine, EncodedReference, SynthesisOptions
from .errors import InvalidRequest, TTSError, UnknownModel, UnsupportedFormat, VoiceDataError
from .guard import Guard
from .scheduler import Job, Scheduler
from .state import MODEL_ALIASES, ServerConfig, ServerState, make_engine

log = logging.getLogger(__name__)


def create_app(
    config: ServerConfig,
    engine: Engine | None = None,
    on_load_failed: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    state = ServerState(
        config=config,
        engine=engine or make_engine(config),
        scheduler=Scheduler(config.max_pending, config.request_timeout),
        on_load_failed=on_load_failed,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Load in a thread so /health answers 503 while the model loads instead of refusing connections.
        state.start_loading()
        yield
        state.scheduler.shutdown()

    # The API description only when asked (--docs): a public server need not list itself.
    docs = {} if config.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="imgbuild TTS", version=__version__, lifespan=lifespan, **docs)
    app.state.tts = state
    app.add_middleware(
        Guard,
        max_bytes=config.max_body_bytes,
        body_timeout=config.body_timeout,
        api_key=config.api_key,
        reply=_error,
    )
    _add_error_handlers(app)

    @app.get("/health")
    @app.post("/v1/health")  # fish-speech 1.2's health route
    def health() -> JSONResponse:
        status, body = state.health()
        return JSONResponse(body, status_code=status, headers={"Retry-After": "2"} if status == 503 else None)

    @app.get("/v1/models")
    def models() -> dict[str, object]:
        info, _, _ = state.require_ready()
        entry = {"object": "model", "created": int(state.loaded_at), "owned_by": "imgbuild", **info.to_json()}
        return {"object": "list", "data": [{"id": info.model, **entry}]}

    @app.get("/v1/audio/models")  # what Open WebUI asks an OpenAI-compatible speech server for
    def audio_models() -> dict[str, object]:
        info, _, _ = state.require_ready()
        return {"models": [{"id": name} for name in (info.model, *MODEL_ALIASES)]}

    @app.get("/v1/audio/voices")
    def voices() -> dict[str, object]:
        _, catalog, _ = state.require_ready()
        return catalog.to_json()

    @app.post("/v1/audio/speech")
    async def speech(body: SpeechRequest, request: Request) -> Response:
        info, _, _ = state.require_ready()
        if body.model and body.model not in (info.model, info.engine, *MODEL_ALIASES):
            names = ", ".join((info.model, *MODEL_ALIASES))
            raise UnknownModel(f"unknown model {body.model!r}; this server has {names}", param="model")
        stream = body.stream if body.stream is not None else body.response_format not in ("wav", "flac")
        return await _synthesize(state, request, body.input, body.voice, body.response_format, stream,
                                 SynthesisOptions(speed=body.speed), None, "input")  # fmt: skip

    @app.post("/v1/invoke")
    async def invoke(body: InvokeRequest, request: Request) -> Response:
        state.require_ready()
        uploaded = None
        limit = state.config.max_reference_chars
        if body.reference_text and len(body.reference_text) > limit:
            raise InvalidRequest(
                f"reference_text has {len(body.reference_text)} characters; at most {limit}", param="reference_text"
            )
        if body.reference_audio:
            try:
                uploaded = (base64.b64decode(body.reference_audio, validate=True), body.reference_text or "")
            except (binascii.Error, ValueError):
                raise InvalidRequest("reference_audio is not valid base64", param="reference_audio") from None
        voice = None
        if body.speaker:
            voice = f"{body.speaker}/{body.emotion}" if body.emotion else body.speaker
        response = await _synthesize(state, request, body.text, voice, body.format, body.streaming,
                                     SynthesisOptions(sampling=body.sampling()), uploaded, "text")  # fmt: skip
        response.headers["Content-Disposition"] = f"attachment; filename=audio.{body.format}"
        return response

    return app


async def _synthesize(
    state: ServerState,
    request: Request,
    text: str,
    voice_name: str | None,
    fmt: str,
    stream: bool,
    options: SynthesisOptions,
    uploaded: tuple[bytes, str] | None,
    text_param: str,
) -> Response:
    info, catalog, cache = state.require_ready()
    if not text.strip():
        raise InvalidRequest("the text is empty", param=text_param)
    if len(text) > state.config.max_chars:
        raise InvalidRequest(f"the text has {len(text)} characters; at most {state.config.max_chars}", param=text_param)
    if fmt not in FORMATS:
        raise UnsupportedFormat(f"unsupported audio format {fmt!r}; supported: {', '.join(FORMATS)}")
    voice = catalog.resolve(voice_name)
    options = SynthesisOptions(
        speed=options.speed, speaker=voice.speaker, sampling=options.sampling, low_latency=stream
    )

    def work(cancel: threading.Event) -> Iterator[np.ndarray]:
        # Runs on the inference thread: references are encoded (or fetched from the cache) there too.
        refs: list[EncodedReference]
        if uploaded is not None:
            refs = [cache.get_bytes(*uploaded)]
        else:
            refs = [cache.get_pair(pair) for pair in voice.references]
        return state.engine.synthesize(text, refs, options, cancel)

    started = time.monotonic()
    job = state.scheduler.submit(work)
    chunks = job.chunks()
    # Until the response starts, nothing else notices a client that hangs up: watch for it.
    watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
    try:
        try:
            # Wait for the first sentence before answering, so an error in it still gets a proper status.
            first = await chunks.__anext__()
        except StopAsyncIteration:
            raise InvalidRequest("the text contains nothing to speak", param=text_param) from None
        # Header values are Latin-1: a voice name in another script (ref_data/测试说话/...) is percent-encoded.
        headers = {"X-Sample-Rate": str(info.sample_rate), "X-Voice": quote(voice.name, safe="/")}
        ttfa = time.monotonic() - started
        if stream:
            return StreamingResponse(
                _stream_body(chunks, first, fmt, info.sample_rate, voice.name, started, ttfa),
                media_type=CONTENT_TYPES[fmt],
                headers=headers,
            )
        # Encoded as the chunks come, so a long text never holds all its float samples at once.
        encoder = open_encoder(fmt, info.sample_rate, stream=False)
        body, samples = [await _off_loop(encoder.feed, first)], first.size
        async for chunk in chunks:
            samples += chunk.size
            body.append(await _off_loop(encoder.feed, chunk))
    finally:
        watcher.cancel()
        if not stream:
            job.settle()
    body.append(await _off_loop(encoder.finish))
    _log_done(voice.name, len(text), samples / info.sample_rate, time.monotonic() - started, ttfa)
    return Response(b"".join(body), media_type=CONTENT_TYPES[fmt], headers=headers)


async def _off_loop(call: Callable[..., bytes], *args: object) -> bytes:
    # mp3/opus/aac encoding of a long sentence takes a noticeable time: not on the event loop, which serves
    # every other client meanwhile. One call at a time per encoder, so it needs no lock.
    return await asyncio.to_thread(call, *args)


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    # The body was read already (guard.py), so the next message on the channel is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
    log.info("client went away; stopping its synthesis")
    job.settle()


async def _stream_body(
    chunks: AsyncIterator[np.ndarray], first: np.ndarray, fmt: str, rate: int, voice: str, started: float, ttfa: float
) -> AsyncIterator[bytes]:
    samples = first.size
    encoder = open_encoder(fmt, rate, stream=True)
    try:
        yield await _off_loop(encoder.feed, first)
        async for chunk in chunks:
            samples += chunk.size
            if data := await _off_loop(encoder.feed, chunk):
                yield data
        yield await _off_loop(encoder.finish)
    except TTSError as exc:
        # Headers are gone already: the audio simply ends early; the log says why.
        log.warning("stream for voice %s ended early: %s", voice, exc.message)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    _log_done(voice, -1, samples / rate, time.monotonic() - started, ttfa)


def _log_done(voice: str, chars: int, seconds: float, elapsed: float, ttfa: float) -> None:
    rtf = elapsed / seconds if seconds > 0 else float("inf")
    log.info("voice=%s chars=%d audio=%.2fs elapsed=%.3fs first_audio=%.3fs rtf=%.3f",
             voice, chars, seconds, elapsed, ttfa, rtf)  # fmt: skip


def _error(exc: TTSError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TTSError)
    async def tts_error(_request: Request, exc: TTSError) -> JSONResponse:
        if isinstance(exc, VoiceDataError) or exc.status >= 500:
            log.warning("request failed: %s", exc.message)
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            err = InvalidRequest(f"malformed JSON: {first.get('msg', '')}")
            err.code = "invalid_json"
        else:
            where = ".".join(loc)
            err = InvalidRequest(f"{where or 'body'}: {first.get('msg', 'invalid')}", param=where or None)
        return _error(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = TTSError(str(exc.detail))
        err.status, err.kind, err.code = exc.status_code, "invalid_request_error", f"http_{exc.status_code}"
        return _error(err)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(TTSError(f"internal error: {type(exc).__name__}"))

