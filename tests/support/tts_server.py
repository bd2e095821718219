"""A real uvicorn server running the TTS runtime in a thread, with uvicorn_config's production settings, and
the real piper engine with gates that tests open (held loading, held after the first sentence).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import soundfile
import uvicorn

from imgbuild_runtime.app import create_app
from imgbuild_runtime.piper_engine import PiperEngine
from imgbuild_runtime.server import uvicorn_config
from imgbuild_runtime.state import ServerConfig


def write_ref(folder: Path, name: str, text: str, hz: float, amplitude: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(16000) / 16000
    soundfile.write(folder / f"{name}.wav", amplitude * np.sin(2 * np.pi * hz * t), 16000)
    (folder / f"{name}.lab").write_text(text, encoding="utf-8")


def make_ref_data(root: Path) -> Path:
    """fish-speech's ref_data layout, plus the mistakes a hand-made folder has."""
    write_ref(root / "1paimon" / "e1", "2003_1", "我们这边也不是那么好骗的", 220, 0.05)
    write_ref(root / "2r" / "e1", "2r", "a second speaker", 330, 0.3)
    write_ref(root / "2r" / "happy", "b_take", "happy take two", 440, 0.2)
    write_ref(root / "2r" / "happy", "a_take", "happy take one", 440, 0.2)
    write_ref(root / "3lonely" / "e1", "x", "unpaired", 220, 0.1)
    (root / "3lonely" / "e1" / "x.lab").unlink()  # a .wav without its .lab is not a voice
    (root / "2r" / "happy" / "c_orphan.lab").write_text("no audio", encoding="utf-8")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(config: ServerConfig, engine: PiperEngine | None = None, wait_ready: bool = True) -> Iterator[httpx.Client]:
    """A real uvicorn server on 127.0.0.1 in a thread; yields an httpx client bound to it."""
    app = create_app(config, engine)
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, config, "127.0.0.1", port, "warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        if wait_ready:
            while client.get("/health").status_code != 200:
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        server.should_exit = True
        thread.join(15)


class GatedPiper(PiperEngine):
    """The real piper engine, with gates tests open: before loading, and after the first sentence."""

    def __init__(self, *args, hold_load: bool = False, fail_on: str = "", **kw):
        super().__init__(*args, **kw)
        self.load_gate = threading.Event()
        self.chunk_gate = threading.Event()
        self.first_sent = threading.Event()
        self.held = threading.Event()
        self.warmed = False
        self.chunk_gate.set()  # tests clear it to hold a request after its first sentence
        if not hold_load:
            self.load_gate.set()
        self.fail_on = fail_on

    def load(self) -> None:
        assert self.load_gate.wait(30)
        super().load()

    def warmup(self) -> None:
        super().warmup()
        self.warmed = True

    def synthesize(self, text, references, options, cancel):
        if self.fail_on and self.fail_on in text:
            raise RuntimeError("engine exploded on purpose")
        for i, chunk in enumerate(super().synthesize(text, references, options, cancel)):
            yield chunk
            if i == 0 and self.warmed:
                self.first_sent.set()
                self.held.set()  # set while the engine waits at the gate: nothing after chunk one exists yet
                self.chunk_gate.wait(30)
                self.held.clear()
