"""Run the app under uvicorn until stopped: the one place that wires loading failures to the exit code.

Other entry points (e.g. a custom engine's serve script) call serve() with their own Engine.
"""

from __future__ import annotations

import logging
import signal
import threading

from .engine import Engine
from .state import ServerConfig


def uvicorn_config(app: object, config: ServerConfig, host: str, port: int, log_level: str = "info"):  # type: ignore[no-untyped-def]
    """uvicorn's settings for this server: header deadline, keep-alive, connection limit, quick shutdown."""
    import uvicorn

    from .guard import header_deadline_protocol

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=header_deadline_protocol(config.header_timeout),
        timeout_keep_alive=5,
        limit_concurrency=config.max_connections,
        # SIGTERM: open streams get this long to finish; the engine stops at its next chunk (Scheduler.shutdown).
        timeout_graceful_shutdown=5,
    )


def serve(
    config: ServerConfig, engine: Engine | None = None, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info"
) -> int:
    """Serve until Ctrl-C/SIGTERM (returns 0) or until the model fails to load (returns 1)."""
    import uvicorn

    from .app import create_app

    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_load_failed(exc: BaseException) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(config, engine=engine, on_load_failed=on_load_failed)
    server = uvicorn.Server(uvicorn_config(app, config, host, port, log_level))
    logging.getLogger(__name__).info("settings: %s", config.to_json())
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again for the handler that was
    # there before it: with the default ones the process would die by the signal (exit 143, or a
    # KeyboardInterrupt traceback) after a clean shutdown. Handlers that do nothing make it return 0.
    main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT) if main}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0
