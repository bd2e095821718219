"""What stands between the network and the app: the API key, the body limit and read timeout, and a
deadline for a request's headers.

The guard is pure ASGI and reads the whole body before the app sees it (the app parses JSON bodies whole
anyway): chunked bodies, which carry no Content-Length, are counted against the same limit as they arrive,
and a client that stops sending gets 408 instead of holding a connection. Headers never reach ASGI, so the
header deadline lives in uvicorn's protocol (a slowloris connection that trickles one header line at a
time is closed); idle keep-alive connections are closed by uvicorn's own keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import BodyTimeout, BodyTooLarge, TTSError, Unauthorized

# Container health checks and load balancers probe these without a key; they show no voices or audio.
OPEN_PATHS = ("/health", "/v1/health")

Reply = Callable[[TTSError], object]


class Guard:
    def __init__(
        self, app, *, max_bytes: int, body_timeout: float, api_key: str | None, reply: Reply  # type: ignore[no-untyped-def]
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.reply = reply  # TTSError -> an ASGI response (app.py's error shape)

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        if self.expected is not None and scope.get("path") not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                what = "no API key" if not given else "a wrong API key"
                await self._refuse(Unauthorized(f"{what}; send Authorization: Bearer KEY"), scope, receive, send)
                return
        length = headers.get(b"content-length", b"")
        if length and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(BodyTooLarge(f"request body over {self.max_bytes} bytes"), scope, receive, send)
            return
        body = bytearray()
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                error = BodyTimeout(f"no request body data for {self.body_timeout:g} s")
                await self._refuse(error, scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(BodyTooLarge(f"request body over {self.max_bytes} bytes"), scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _refuse(self, error: TTSError, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        response = self.reply(error)
        await response(scope, receive, send)  # type: ignore[operator]


def _replay(body: bytes, receive: Callable[[], Awaitable[dict]]) -> Callable[[], Awaitable[dict]]:
    """The body once, then the real channel (which reports the client's disconnect)."""
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def header_deadline_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection that has not sent a complete request head in time."""

    class HeaderDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def, override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head is complete
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline
