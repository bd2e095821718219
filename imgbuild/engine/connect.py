"""Connect to a container engine: Docker Engine or Podman's Docker-compatible API, through the docker SDK.

Selection order: an explicit host, then DOCKER_HOST (unix://, tcp:// or ssh://), then the usual socket
paths. When nothing answers and Podman is installed, a private `podman system service` is started on a
socket in a temporary folder for the duration of the `connect()` context and stopped afterwards, so a
machine with Podman but no running service still works.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import docker
import docker.constants
import docker.errors
import docker.utils
import requests

from imgbuild.foundation.errors import EngineError, OptionError, Remedy
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent, no_progress

EngineKind = Literal["docker", "podman"]
ENGINE_CHOICES = ("auto", "docker", "podman")

# Builds stream their log, but a single RUN step (pip installing torch) can stay silent for many minutes;
# the SDK's default 60 s read timeout would abort such a build.
DEFAULT_TIMEOUT = int(os.environ.get("IMGBUILD_ENGINE_TIMEOUT", "3600"))
PRIVATE_SERVICE_WAIT = 30.0
PROBE_TIMEOUT = 15

# Engine versions (major.minor) imgbuild's tests run against; README's "Engines" lists the same.
TESTED_VERSIONS: dict[str, tuple[str, ...]] = {"docker": ("20.10", "26.1"), "podman": ("4.3", "5.4")}
_warned: set[tuple[str, str]] = set()


def display_name(found: Engine) -> str:
    """"Docker Engine 26.1.5" or "Podman 5.4.2": how messages name an engine."""
    return f"{'Podman' if found.kind == 'podman' else 'Docker Engine'} {found.version}"


def untested_version_warning(found: Engine) -> str | None:
    """A warning when the engine's version is not one imgbuild is tested with, else None."""
    release = ".".join(found.version.split("+", 1)[0].split("-", 1)[0].split(".")[:2])
    tested = TESTED_VERSIONS.get(found.kind, ())
    if release in tested:
        return None
    return (f"warning: {display_name(found)} at {found.host} is not a version imgbuild is tested with "
            f"({', '.join(tested)})")


@dataclass(frozen=True)
class Engine:
    """A connected engine. ``api`` is the SDK's low-level APIClient (streaming build, save, load)."""

    client: docker.DockerClient = field(repr=False)
    api: Any = field(repr=False)
    kind: EngineKind
    host: str
    version: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "host": self.host, "version": self.version}


def socket_candidates(engine: str) -> list[tuple[str, str]]:
    """(kind, url) of the usual sockets, in the order they are tried."""
    found: list[tuple[str, str]] = []
    if engine in ("auto", "docker"):
        found += [("docker", "unix:///var/run/docker.sock"), ("docker", "unix:///run/docker.sock")]
    if engine in ("auto", "podman"):
        found.append(("podman", "unix:///run/podman/podman.sock"))
        runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
        if runtime_dir:
            found.append(("podman", f"unix://{runtime_dir}/podman/podman.sock"))
    return found


def engine_kind(version_info: dict[str, Any]) -> EngineKind:
    """Podman names itself in the version's components; Docker Engine does not."""
    names = [str(c.get("Name", "")) for c in version_info.get("Components") or []]
    return "podman" if any("podman" in n.lower() for n in names) else "docker"


@dataclass(frozen=True)
class Identity:
    kind: EngineKind
    version: str
    api_version: str


def identity_from_ping(headers: Mapping[str, str]) -> Identity | None:
    """Kind, version and API version from the headers of GET /_ping: Podman sends Libpod-Api-Version (its
    own version), Docker Engine a Server header "Docker/VERSION (OS)". None when they say too little."""
    api_version = headers.get("Api-Version")
    if not api_version:
        return None
    if podman := headers.get("Libpod-Api-Version"):
        return Identity("podman", podman, api_version)
    server = re.fullmatch(r"Docker/(\S+)(?: .*)?", headers.get("Server", ""))
    return Identity("docker", server.group(1), api_version) if server else None


def _identify(api: Any) -> Identity:
    """GET /_ping answers at once; GET /version (where the ping's headers say too little) takes Podman about
    0.4 s, as it asks its runtime and conmon for their versions."""
    response = api.get(f"{api.base_url}/_ping")
    response.raise_for_status()
    found = identity_from_ping(response.headers)
    if found is not None:
        return found
    info = api.version(api_version=False)
    return Identity(engine_kind(info), str(info.get("Version", "?")), str(info.get("ApiVersion") or "auto"))


def _open(host: str, timeout: int) -> Engine:
    """Connect to one host or raise EngineError with the SDK's reason."""
    if host.startswith("unix://") and not os.path.exists(host[len("unix://"):]):
        raise EngineError(f"{host}: no such socket")
    # DOCKER_HOST comes with DOCKER_TLS_VERIFY/DOCKER_CERT_PATH; honour them the way the docker CLI does.
    tls = docker.utils.kwargs_from_env().get("tls") if host == os.environ.get("DOCKER_HOST") else None
    # use_ssh_client: ssh:// hosts go through the system's ssh binary and its config, not paramiko.
    ssh = host.startswith("ssh://")
    try:
        # A short timeout to find out whether anything answers; the client that does the work waits long.
        # The probe's API version is a placeholder: it asks unversioned paths only, instead of the SDK's own
        # negotiation through GET /version.
        probe = docker.DockerClient(base_url=host, timeout=PROBE_TIMEOUT, tls=tls or False, use_ssh_client=ssh,
                                    version=docker.constants.MINIMUM_DOCKER_API_VERSION)
        try:
            found = _identify(probe.api)
        finally:
            probe.close()
        client = docker.DockerClient(base_url=host, timeout=timeout, tls=tls or False, use_ssh_client=ssh,
                                     version=found.api_version)
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        raise EngineError(f"{host}: {exc}") from exc
    return Engine(client=client, api=client.api, kind=found.kind, host=host, version=found.version)


def _matches(engine: str, found: Engine) -> bool:
    return engine == "auto" or engine == found.kind


@contextmanager
def connect(engine: str = "auto", host: str | None = None, *,
            progress: ProgressCallback = no_progress, timeout: int = DEFAULT_TIMEOUT) -> Iterator[Engine]:
    """Yield a connected Engine; a private Podman service started here is stopped on exit."""
    if engine not in ENGINE_CHOICES:
        raise OptionError("engine", f"must be one of {', '.join(ENGINE_CHOICES)}, not {engine!r}")
    tried: list[str] = []

    if host:
        found = _open(host, timeout)
        if not _matches(engine, found):
            raise EngineError(f"{host} is {found.kind} {found.version}, but {engine} was asked for")
        with _closing(found, progress):
            yield found
        return

    env_host = os.environ.get("DOCKER_HOST")
    candidates = ([("DOCKER_HOST", env_host)] if env_host else []) + socket_candidates(engine)
    for _, url in candidates:
        try:
            found = _open(url, timeout)
        except EngineError as exc:
            tried.append(str(exc))
            continue
        if not _matches(engine, found):
            tried.append(f"{url}: is {found.kind}, not {engine}")
            found.client.close()
            continue
        with _closing(found, progress):
            yield found
        return

    if engine in ("auto", "podman") and shutil.which("podman"):
        with _private_podman(progress, timeout, tried) as found:
            yield found
        return
    if engine in ("auto", "podman"):
        tried.append("podman: not installed, cannot start a private service")
    raise EngineError(
        "no container engine found; tried:\n  " + "\n  ".join(tried),
        hint="start one (scripts/engines.sh start) or set DOCKER_HOST", remedy=Remedy.GIVE_ENGINE_HOST,
    )


@contextmanager
def _closing(found: Engine, progress: ProgressCallback = no_progress) -> Iterator[Engine]:
    warning = untested_version_warning(found)
    if warning is not None and (found.kind, found.version) not in _warned:
        _warned.add((found.kind, found.version))  # once per process and version
        progress(ProgressEvent(task="engine", message=warning, warning=True))
    try:
        yield found
    finally:
        found.client.close()


@contextmanager
def _private_podman(progress: ProgressCallback, timeout: int, tried: list[str]) -> Iterator[Engine]:
    """Run `podman system service` on a private socket (inheriting CONTAINERS_CONF) while the context lasts."""
    folder = tempfile.mkdtemp(prefix="imgbuild-podman-")
    sock = os.path.join(folder, "podman.sock")
    url = f"unix://{sock}"
    progress(ProgressEvent(task="engine", message=f"starting a private podman service at {sock}"))
    log = open(os.path.join(folder, "service.log"), "wb")
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", url],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        try:
            found = _wait_for_service(proc, url, sock, timeout, folder)
        except EngineError as exc:
            tried.append(str(exc))
            raise EngineError("no container engine found; tried:\n  " + "\n  ".join(tried)) from exc
        with _closing(found, progress):
            yield found
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_service(proc: subprocess.Popen, url: str, sock: str, timeout: int, folder: str) -> Engine:
    deadline = time.monotonic() + PRIVATE_SERVICE_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(os.path.join(folder, "service.log"), errors="replace") as f:
                tail = f.read()[-2000:].strip()
            raise EngineError(f"private podman service exited with {proc.returncode}: {tail}")
        if os.path.exists(sock):
            try:
                return _open(url, timeout)
            except EngineError:
                pass
        time.sleep(0.2)
    raise EngineError(f"private podman service did not answer at {url} within {PRIVATE_SERVICE_WAIT:.0f} s")
