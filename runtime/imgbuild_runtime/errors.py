"""Errors a request can cause. Each maps to one HTTP status and a JSON body in app.py, in one place.

This package runs inside app images without imgbuild installed, so it has its own small tree.
"""

from __future__ import annotations


class TTSError(Exception):
    """Root. ``status`` is the HTTP status, ``code`` a stable machine-readable name."""

    status = 500
    code = "internal_error"
    kind = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_json(self) -> dict[str, object]:
        # OpenAI's error shape, which OpenAI-compatible clients already parse.
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class InvalidRequest(TTSError):
    status = 400
    code = "invalid_request"
    kind = "invalid_request_error"


class UnknownVoice(InvalidRequest):
    code = "voice_not_found"

    def __init__(self, voice: str, available: list[str]) -> None:
        shown = ", ".join(available[:20]) or "none"
        super().__init__(f"unknown voice {voice!r}; available: {shown}", param="voice")
        self.voice = voice


class UnknownModel(InvalidRequest):
    status = 404  # as OpenAI answers for a model it does not have; its SDK raises NotFoundError
    code = "model_not_found"


class UnsupportedFormat(InvalidRequest):
    code = "unsupported_format"


class BadReferenceAudio(InvalidRequest):
    """An uploaded reference recording (fish-speech's `reference_audio`) that cannot be decoded."""

    code = "bad_reference_audio"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "body_too_large"


class Unauthorized(TTSError):
    """A missing or wrong API key (`Authorization: Bearer KEY`); OpenAI's SDK raises AuthenticationError."""

    status = 401
    code = "invalid_api_key"
    kind = "invalid_request_error"


class BodyTimeout(InvalidRequest):
    """The client stopped sending its request body (a slow or stalled upload)."""

    status = 408
    code = "body_timeout"


class QueueFull(TTSError):
    status = 429
    code = "queue_full"
    kind = "rate_limit_error"


class NotReady(TTSError):
    status = 503
    code = "not_ready"


class RequestTimeout(TTSError):
    status = 504
    code = "timeout"


class ClientClosed(TTSError):
    """The client went away before its answer (nginx's 499); only the log sees it."""

    status = 499
    code = "client_closed_request"


class EngineFailed(TTSError):
    """The engine raised while synthesizing: the request fails, the server keeps serving."""

    code = "engine_error"


class VoiceDataError(TTSError):
    """A reference audio or label file could not be read."""

    code = "voice_data_error"
