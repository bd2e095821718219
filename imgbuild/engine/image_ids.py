"""Image identity across image stores.

A set names each image by its config digest (sha256 of the config JSON), which is the image id of Podman
and of Docker Engine's classic store. Docker Engine's containerd image store (Docker 29's default, an
option since 24) names an image by the digest of its manifest instead and cannot be asked for an image
by config digest. There, an image of the set is found among the engine's images by what its config holds
(layers' diff ids, creation time, platform, labels, command and environment): all of it parsed from the
config bytes the engine stored, so two images that agree on all of it run the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import docker.errors

from imgbuild.engine.connect import Engine, display_name
from imgbuild.engine.images import find_image
from imgbuild.foundation.errors import EngineError

CONTAINERD_DRIVER_TYPE = "io.containerd.snapshotter.v1"


_stores: dict[tuple[str, str], str] = {}  # (host, version) -> store: asked once per process


def image_store(engine: Engine) -> str:
    """"podman", "classic" (Docker Engine's graph drivers) or "containerd" (Docker's containerd image store)."""
    if engine.kind == "podman":
        return "podman"
    key = (engine.host, engine.version)
    if key not in _stores:
        try:
            info = engine.api.info()
        except (docker.errors.DockerException, OSError) as exc:
            raise EngineError(f"{display_name(engine)} at {engine.host}: cannot read its info: {exc}") from exc
        status = json.dumps(info.get("DriverStatus") or [])
        _stores[key] = "containerd" if CONTAINERD_DRIVER_TYPE in status else "classic"
    return _stores[key]


def describe(engine: Engine) -> str:
    """The engine as error messages name it: kind, version and, for Docker, its image store."""
    store = image_store(engine)
    if store == "containerd":
        return f"{display_name(engine)} (containerd image store)"
    return display_name(engine)


def _seconds(created: Any) -> int | None:
    """A config's or an inspect's creation time, to the second (engines reformat the fraction)."""
    if isinstance(created, (int, float)):
        return int(created)
    if not isinstance(created, str) or not created:
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(.*)$", created.strip().replace("Z", "+00:00"))
    if match is None:
        return None
    try:
        return int(datetime.fromisoformat(match.group(1) + (match.group(2) or "+00:00")).timestamp())
    except ValueError:
        return None


def _fingerprint(created: Any, os_: Any, arch: Any, diff_ids: Any, config: dict[str, Any]) -> tuple:
    return (_seconds(created), os_ or "", arch or "", list(diff_ids or []),
            dict(config.get("Labels") or {}), list(config.get("Env") or []), list(config.get("Cmd") or []),
            list(config.get("Entrypoint") or []), config.get("WorkingDir") or "", config.get("User") or "")


def config_fingerprint(config: bytes) -> tuple:
    data = json.loads(config)
    return _fingerprint(data.get("created"), data.get("os"), data.get("architecture"),
                        (data.get("rootfs") or {}).get("diff_ids"), data.get("config") or {})


def inspect_fingerprint(info: dict[str, Any]) -> tuple:
    return _fingerprint(info.get("Created"), info.get("Os"), info.get("Architecture"),
                        (info.get("RootFS") or {}).get("Layers"), info.get("Config") or {})


def find_set_image(engine: Engine, image_id: str, config: Callable[[], bytes], tags: Iterable[str] = ()) -> str | None:
    """The engine's id of the image whose config digest is ``image_id``, or None when it has no such image.

    ``config`` gives the image's config (its sha256 is ``image_id``); it is only called for the containerd
    image store, where ``tags`` are looked at before the engine's whole list of images.
    """
    info = find_image(engine, image_id)
    if info is not None and info.get("Id") == image_id:
        return image_id
    if image_store(engine) != "containerd":
        return None
    wanted = config_fingerprint(config())
    for ref in tags:
        info = find_image(engine, ref)
        if info is not None and inspect_fingerprint(info) == wanted:
            return str(info["Id"])
    labels = wanted[4]
    try:
        listed = engine.api.images()
    except docker.errors.APIError as exc:
        raise EngineError(f"{describe(engine)} at {engine.host}: cannot list images: {exc.explanation or exc}") \
            from exc
    for entry in listed:
        if entry.get("Created") != wanted[0] or dict(entry.get("Labels") or {}) != labels:
            continue
        info = find_image(engine, str(entry["Id"]))
        if info is not None and inspect_fingerprint(info) == wanted:
            return str(info["Id"])
    return None
