"""Run the app under uvicorn until stopped: the one place that wires loading failures to the exit code.

Other entry points (e.g. a custom engine's serve script) call serve() with their own Engine.
"""

from __future__ import annotations

import logging

from .engine import Engine
from .state import ServerConfig


def serve(
    config: ServerConfig, engine: Engine | None = None, host: str = "0.0.0.0", port: int = 8080, log_level: str = "info"
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
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    logging.getLogger(__name__).info("settings: %s", config.to_json())
    server.run()
    return 1 if failed else 0
