"""A bounded request queue in front of one inference thread.

One synthesis runs at a time: the engine already spreads one run over all physical cores, and two runs at
once would only share them and both be late. Requests beyond `max_pending` (running + waiting) are refused
at once with 429 instead of piling up; each request has a deadline covering its wait and its synthesis,
checked between chunks (an ONNX run cannot be interrupted midway). Chunks cross from the inference thread to
the event loop through an asyncio queue, so the first sentence is sent while the next is computed. A client
that goes away, or a request past its deadline, cancels its job: the worker skips it or stops at the next
chunk (engines keep chunks short, see piper_engine.py). A request's queue slot is freed as soon as its
answer is settled (complete, failed or abandoned), before the response is sent, so a client that asks again
right after an answer is never refused because of its own previous request.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .errors import ClientClosed, EngineFailed, QueueFull, RequestTimeout, TTSError

Work = Callable[[threading.Event], Iterator[np.ndarray]]

log = logging.getLogger(__name__)

_CHUNK, _ERROR, _DONE = "chunk", "error", "done"


@dataclass(frozen=True)
class QueueState:
    pending: int
    max_pending: int
    timeout: float

    def to_json(self) -> dict[str, float | int]:
        return {"pending": self.pending, "max_pending": self.max_pending, "timeout_seconds": self.timeout}


class Job:
    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float, release: Callable[["Job"], None]) -> None:
        self.loop = loop
        self.deadline = deadline
        self.cancel = threading.Event()
        self.queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self._release = release

    def settle(self) -> None:
        """The client has its answer or is gone: stop the work and free the slot (event loop only)."""
        if not self.cancel.is_set():
            self.cancel.set()
            # Wakes a reader still waiting (the client went away before the first chunk).
            self.queue.put_nowait((_ERROR, ClientClosed("the client closed the connection")))
        self._release(self)

    def _put(self, kind: str, value: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancel.set()

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        try:
            while True:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise RequestTimeout("synthesis did not finish before the request timeout")
                try:
                    kind, value = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    raise RequestTimeout("synthesis did not finish before the request timeout") from None
                if kind == _CHUNK:
                    yield value  # type: ignore[misc]
                elif kind == _ERROR:
                    raise value  # type: ignore[misc]
                else:
                    return
        finally:
            self.settle()


class Scheduler:
    def __init__(self, max_pending: int, timeout: float) -> None:
        self.max_pending = max_pending
        self.timeout = timeout
        self._jobs: set[Job] = set()  # admitted and not settled; touched only on the event loop thread
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts-inference")

    def state(self) -> QueueState:
        return QueueState(len(self._jobs), self.max_pending, self.timeout)

    def submit(self, work: Work) -> Job:
        """Admit a request or raise QueueFull; the caller then iterates job.chunks()."""
        if len(self._jobs) >= self.max_pending:
            raise QueueFull(f"{len(self._jobs)} requests are already queued or running; try again later")
        loop = asyncio.get_running_loop()
        job = Job(loop, time.monotonic() + self.timeout, self._jobs.discard)
        self._jobs.add(job)
        future = loop.run_in_executor(self._executor, _run, job, work)
        # Normally the client's side settles the job first; this covers a job whose chunks were never read.
        future.add_done_callback(lambda _f: job.settle())
        return job

    def shutdown(self) -> None:
        for job in list(self._jobs):
            job.settle()  # the running engine stops at its next chunk, so the process can exit
        self._executor.shutdown(wait=False, cancel_futures=True)


def _run(job: Job, work: Work) -> None:
    """Runs on the inference thread. Never raises: every outcome goes to the job's queue."""
    try:
        if job.cancel.is_set():
            return
        if time.monotonic() > job.deadline:
            job._put(_ERROR, RequestTimeout("the request waited in the queue longer than the request timeout"))
            return
        for chunk in work(job.cancel):
            if job.cancel.is_set():
                return
            job._put(_CHUNK, chunk)
            if time.monotonic() > job.deadline:
                job._put(_ERROR, RequestTimeout("synthesis did not finish before the request timeout"))
                return
        job._put(_DONE, None)
    except TTSError as exc:
        job._put(_ERROR, exc)
    except Exception as exc:  # an engine bug fails one request, never the server
        log.exception("synthesis failed")
        job._put(_ERROR, EngineFailed(f"{type(exc).__name__}: {exc}"))
    finally:
        _return_free_memory()


def _return_free_memory() -> None:
    """Give the heap a long request grew back to the system (glibc keeps freed memory in its arenas)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():  # type: ignore[no-untyped-def]
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only (musl has none)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()
