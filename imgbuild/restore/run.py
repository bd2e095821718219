"""load-and-run: start an image's serve command, publish its port, wait for its health check, stop on Ctrl-C.

The serve section (port, command, env, health check) comes from the recipe recorded in the set manifest; an
image built by imgbuild also carries it as the label org.imgbuild.serve, used when the manifest has no
recipe (or it cannot be read). The port is published on 127.0.0.1 unless asked otherwise: an offline
model server is for this machine unless the user decides to share it.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import docker.errors
import requests
from pydantic import ValidationError

from imgbuild.discs.locate import LocatedSet, locate_set
from imgbuild.engine.connect import Engine
from imgbuild.foundation.errors import LoadError, OptionError, RecipeError, Remedy, UsageError
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent, no_progress
from imgbuild.recipe.loader import parse_recipe_text
from imgbuild.recipe.model import Recipe, Serve
from imgbuild.restore.load import LoadOptions, LoadResult, load_located, select_images
from imgbuild.setformat.manifest import Image, SetManifest

SERVE_LABEL = "org.imgbuild.serve"
RUN_LABEL = "org.imgbuild.run"
LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class RunOptions:
    image: str | None = None
    bind: str = "127.0.0.1"
    port: int | None = None  # host port; None: the serve port itself; 0: any free port
    cpus: float | None = None
    memory: str | None = None
    detach: bool = False
    health_timeout: float | None = None
    name: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # (NAME, VALUE) over the recipe's serve env, in order


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_env(values: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """NAME=VALUE strings -> pairs; OptionError("env") naming the first that is not one."""
    pairs = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not _ENV_NAME.fullmatch(name):
            raise OptionError("env", f"{value!r} is not NAME=VALUE (NAME: letters, digits and _, not first a digit)")
        pairs.append((name, rest))
    return tuple(pairs)


@dataclass(frozen=True)
class RunResult:
    image: str
    image_id: str
    container_id: str
    url: str
    health_url: str
    seconds_to_healthy: float
    detached: bool
    stopped: bool = False
    stop_reason: str | None = None
    load: LoadResult | None = None

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "image_id": self.image_id, "container_id": self.container_id,
                "url": self.url, "health_url": self.health_url,
                "seconds_to_healthy": round(self.seconds_to_healthy, 3), "detached": self.detached,
                "stopped": self.stopped, "stop_reason": self.stop_reason,
                "load": self.load.to_json() if self.load else None}


def load_and_run(engine: Engine, dirs: Sequence[Path], load_options: LoadOptions, options: RunOptions,
                 progress: ProgressCallback = no_progress,
                 on_ready: Callable[[RunResult], None] | None = None) -> RunResult:
    """Load the set (images already present are skipped), start the chosen image and wait until healthy.

    With ``options.detach`` the container keeps running and the result is returned at once. Otherwise
    ``on_ready`` is called with the result once healthy, and this blocks until SIGINT/SIGTERM or until the
    container exits, then stops and removes the container.
    """
    return run_located(engine, locate_set(dirs, load_options.catalog, load_options.set_id), load_options, options,
                       progress, on_ready)


def run_located(engine: Engine, located: LocatedSet, load_options: LoadOptions, options: RunOptions,
                progress: ProgressCallback = no_progress,
                on_ready: Callable[[RunResult], None] | None = None) -> RunResult:
    """load_and_run on a located set. The load checks every part it sends (size, sha256) as it streams, so
    the set is verified in the same read that loads it, and each disc is read once."""
    image = pick_image(located.manifest, options.image)
    loaded = load_located(engine, located, load_options, progress)
    ref = next((i.engine_id for i in loaded.images if i.number == image.number and i.engine_id), image.id)
    serve = serve_spec(engine, located.manifest, image, ref)
    with _sigterm_as_interrupt():
        result = start_service(engine, image, serve, options, progress, ref=ref)
    result = replace(result, load=loaded)
    if options.detach:
        return result
    stop = threading.Event()
    restore = _on_signals(stop)  # before on_ready: a Ctrl-C right after "healthy" must stop the container too
    try:
        if on_ready is not None:
            on_ready(result)
        reason = wait_until_stopped(engine, result.container_id, progress, stop=stop)
    finally:
        restore()
    return replace(result, stopped=True, stop_reason=reason)


def pick_image(manifest: SetManifest, name: str | None) -> Image:
    """The image ``name`` names, else the app image, else the only image."""
    if name is not None:
        found = select_images(manifest, [name])
        if len(found) != 1:
            raise UsageError(f"{name!r} names {len(found)} images of the set; name one by tag or id")
        return found[0]
    app = manifest.app_image()
    if app is not None:
        return app
    if len(manifest.images) == 1:
        return manifest.images[0]
    names = ", ".join(t for i in manifest.images for t in i.tags)
    raise UsageError(f"set {manifest.name} holds several images and none is marked as the app: {names}",
                     remedy=Remedy.CHOOSE_IMAGE)


def serve_spec(engine: Engine, manifest: SetManifest, image: Image, ref: str | None = None) -> Serve:
    """The serve section: the recipe's when it describes this image, else the image's org.imgbuild.serve label.
    ``ref`` is the engine's id of the image when it is not the set's (LoadedImage.engine_id)."""
    serve = recipe_serve(manifest, image)
    if serve is not None:
        return serve
    labels = (engine.api.inspect_image(ref or image.id).get("Config") or {}).get("Labels") or {}
    raw = labels.get(SERVE_LABEL)
    if raw:
        try:
            return Serve.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            raise LoadError(f"image {image.id}: label {SERVE_LABEL} is not a serve section: {exc}") from exc
    raise LoadError(f"image {image.id} has no serve section (no recipe in the set, no {SERVE_LABEL} label)",
                    hint="run it yourself with podman/docker run",
                    remedy=Remedy.CHOOSE_IMAGE)


def recipe_serve(manifest: SetManifest, image: Image) -> Serve | None:
    """The serve section of the recipe recorded in the manifest, when that recipe describes ``image``."""
    recipe = _recipe_of(manifest)
    if recipe is not None and recipe.app is not None and image.role in ("app", None):
        return recipe.app.serve
    return None


def _recipe_of(manifest: SetManifest) -> Recipe | None:
    """The recipe recorded in the manifest, when it parses without this machine's environment."""
    if manifest.recipe is None:
        return None
    try:
        # Bounded like any recipe: the text comes from a disc and may be hostile.
        return parse_recipe_text(manifest.recipe.recipe.text, "set manifest: recipe")[0]
    except RecipeError:
        return None


def start_service(engine: Engine, image: Image, serve: Serve, options: RunOptions,
                  progress: ProgressCallback = no_progress, *, ref: str | None = None) -> RunResult:
    """Start a container of ``image`` serving ``serve`` and wait for its health check; removed on failure.
    ``ref`` is the engine's id of the image when it is not the set's (LoadedImage.engine_id)."""
    container_port = f"{serve.port}/tcp"
    host_port = serve.port if options.port is None else (options.port or None)
    kwargs: dict[str, Any] = {
        "ports": {container_port: (options.bind, host_port)}, "environment": {**serve.env, **dict(options.env)},
        "labels": {RUN_LABEL: image.id}, "name": options.name,
    }
    if options.cpus is not None:
        kwargs["nano_cpus"] = int(options.cpus * 1e9)
    if options.memory is not None:
        kwargs["mem_limit"] = options.memory
    try:
        container = engine.client.containers.create(ref or image.id, command=list(serve.command) or None, **kwargs)
    except docker.errors.APIError as exc:
        raise LoadError(f"cannot create a container of {image.id}: {exc.explanation or exc}") from exc
    with _removed_on_failure(engine, container.id):
        try:
            container.start()  # created apart from started, so a failed start (port taken) leaves nothing behind
        except docker.errors.APIError as exc:
            raise LoadError(f"cannot start {image.id}: {exc.explanation or exc}") from exc
        port = _published_port(engine, container, container_port)
        host = "127.0.0.1" if options.bind in ("0.0.0.0", "", "::") else options.bind
        host = f"[{host}]" if ":" in host else host
        url = f"http://{host}:{port}/"
        health_url = f"http://{host}:{port}{serve.health.path}"
        timeout = options.health_timeout or serve.health.timeout
        seconds = wait_healthy(engine, container.id, health_url, serve, timeout, progress)
    name = image.tags[0] if image.tags else image.id
    return RunResult(image=name, image_id=image.id, container_id=container.id, url=url, health_url=health_url,
                     seconds_to_healthy=seconds, detached=options.detach)


@contextmanager
def _removed_on_failure(engine: Engine, container_id: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        stop_and_remove(engine, container_id)
        raise


def _published_port(engine: Engine, container: Any, container_port: str) -> int:
    for _ in range(150):  # the engine publishes ports as it starts the container; a busy machine is slow
        container.reload()
        bindings = ((container.attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(container_port)
        if bindings and bindings[0].get("HostPort"):
            return int(bindings[0]["HostPort"])
        if container.status in ("exited", "dead"):
            _raise_exited(engine, container.id, "no answer yet")
        time.sleep(0.1)
    raise LoadError(f"container {container.id[:12]} did not publish {container_port} ({container.status})")


def _raise_exited(engine: Engine, container_id: str, last: str) -> None:
    code = engine.api.inspect_container(container_id)["State"].get("ExitCode")
    raise LoadError(f"the service exited with code {code} before it was healthy ({last})\n"
                    f"{_log_tail(engine, container_id)}")


def wait_healthy(engine: Engine, container_id: str, url: str, serve: Serve, timeout: float,
                 progress: ProgressCallback = no_progress) -> float:
    """Poll the health check until it answers the expected status; seconds it took."""
    started = time.monotonic()
    last = "no answer yet"
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment must not stand between us and 127.0.0.1
    while True:
        elapsed = time.monotonic() - started
        state = engine.api.inspect_container(container_id)["State"]
        if not state.get("Running"):
            _raise_exited(engine, container_id, last)
        try:
            answer = session.request(serve.health.method, url, timeout=min(5.0, serve.health.interval + 4))
            if answer.status_code == serve.health.expect_status:
                progress(ProgressEvent(task="health", message=f"healthy after {elapsed:.1f} s", finished=True))
                return elapsed
            last = f"{serve.health.method} {url} answered {answer.status_code}"
        except requests.RequestException as exc:
            last = f"{serve.health.method} {url}: {type(exc).__name__}"
        if elapsed > timeout:
            raise LoadError(f"the service was not healthy within {timeout:.0f} s ({last})\n"
                            f"{_log_tail(engine, container_id)}")
        progress(ProgressEvent(task="health", message=f"waiting for {url} ({last})"))
        time.sleep(serve.health.interval)


def _log_tail(engine: Engine, container_id: str) -> str:
    try:
        logs = engine.api.logs(container_id, tail=LOG_TAIL_LINES).decode("utf-8", "replace")
    except docker.errors.APIError:
        return "(no logs)"
    return "--- last lines of the service log ---\n" + logs.rstrip()


def stop_and_remove(engine: Engine, container_id: str) -> None:
    try:
        engine.api.stop(container_id, timeout=10)
    except docker.errors.APIError:
        pass
    try:
        engine.api.remove_container(container_id, force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 404:
            raise LoadError(f"cannot remove container {container_id[:12]}: {exc.explanation or exc}") from exc


def wait_until_stopped(engine: Engine, container_id: str, progress: ProgressCallback = no_progress,
                       poll: float = 1.0, stop: threading.Event | None = None) -> str:
    """Block until SIGINT/SIGTERM (or ``stop``, when the caller handles the signals) or the container's exit;
    then stop and remove it. Returns why it stopped."""
    reason = "container exited"
    restore = _on_signals(stop := threading.Event()) if stop is None else (lambda: None)
    try:
        while not stop.wait(poll):
            try:
                state = engine.api.inspect_container(container_id)["State"]
            except docker.errors.NotFound:
                return "container was removed"
            if not state.get("Running"):
                reason = f"container exited with code {state.get('ExitCode')}"
                break
        else:
            reason = "interrupted"
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        restore()
        progress(ProgressEvent(task="stop", message=f"stopping {container_id[:12]} ({reason})"))
        stop_and_remove(engine, container_id)
    return reason


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While starting, SIGTERM interrupts like Ctrl-C does, so the half-started container is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGINT and SIGTERM set ``stop`` (main thread only); returns a function that restores the handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return restore
