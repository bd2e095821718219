"""Images in an engine: inspect data by reference, their labels, and a tag's name and version."""

from __future__ import annotations

import docker.errors

from imgbuild.engine.connect import Engine
from imgbuild.foundation.errors import EngineError


def find_image(engine: Engine, ref: str) -> dict | None:
    """The engine's inspect data of an image, or None when it does not exist."""
    try:
        return engine.api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        if exc.status_code == 404:
            return None
        raise EngineError(f"{engine.kind} {engine.version} at {engine.host}: cannot inspect {ref}: "
                          f"{exc.explanation or exc}") from exc


def image_labels(info: dict | None) -> dict[str, str]:
    return dict(((info or {}).get("Config") or {}).get("Labels") or {})


def split_tag(tag: str) -> tuple[str, str]:
    """'localhost/a/b:1' -> ('localhost/a/b', '1'); a port in the registry part is not a tag."""
    name, sep, version = tag.rpartition(":")
    if not sep or "/" in version:
        return tag, "latest"
    return name, version
