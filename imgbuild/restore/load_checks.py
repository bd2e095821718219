"""What load checks before anything reaches the engine, beyond each file's sha256.

A set can be consistent file by file and still say two different things: the set manifest's layer list of an
image against its config's ``rootfs.diff_ids``, or its tags against the ``RepoTags`` of ``images/manifest.json``
(which restore.sh hands to the engine). Either disagreement means someone changed one side; nothing is loaded.

Loading must also not move a tag the engine already has on another image without being asked: that image
would silently lose its name. ``tag_conflicts`` finds such tags so load can refuse them, naming both images,
unless the user passed --force.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import docker.errors

from imgbuild.discs.sources import VolumeSource
from imgbuild.foundation.errors import ArchiveError, LoadError
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import Image, SetManifest
from imgbuild.setformat.volume_files import docker_manifest


def check_configs(configs: Iterable[tuple[Image, bytes]]) -> None:
    """Each image's config lists the same layers (diff ids, in order) as the set manifest."""
    for image, config in configs:
        try:
            diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        except (ValueError, KeyError, TypeError):
            raise LoadError(f"{image.config.path} (image {image.id}) is not an image config with rootfs.diff_ids") \
                from None
        if diff_ids != list(image.layers):
            raise LoadError(f"image {image.number} ({image.id}): the set manifest lists layers {list(image.layers)}, "
                            f"its config {image.config.path} lists {diff_ids}; nothing was loaded",
                            hint="one of them was changed after the set was written")


def check_docker_manifest(manifest: SetManifest, volumes: dict[int, VolumeSource]) -> None:
    """``images/manifest.json`` on every data volume given says what the set manifest says (configs, tags,
    layers)."""
    expected = json.loads(docker_manifest(list(manifest.images), list(manifest.layers)))
    for number, source in volumes.items():
        if not any(f.path == layout.DOCKER_MANIFEST_PATH for f in manifest.volume(number).files):
            continue  # a parity volume
        shown = source.shown(layout.DOCKER_MANIFEST_PATH)
        try:
            found = json.loads(source.read_small(layout.DOCKER_MANIFEST_PATH, layout.MAX_MANIFEST_BYTES))
        except (ArchiveError, ValueError, RecursionError) as exc:
            raise LoadError(f"{shown}: cannot be read as JSON: {exc}") from None
        if found == expected:
            continue
        for want, got in zip(expected, found if isinstance(found, list) else []):
            if isinstance(got, dict) and got.get("RepoTags") != want["RepoTags"]:
                raise LoadError(f"{shown}: tags {got.get('RepoTags')} for {want['Config']}, the set manifest says "
                                f"{want['RepoTags']}; nothing was loaded")
        raise LoadError(f"{shown} differs from what the set manifest says ({json.dumps(expected)[:200]}); "
                        "nothing was loaded")


@dataclass(frozen=True)
class TagConflict:
    tag: str
    holder: str  # the engine's id of the image that has the tag now
    image: str  # the set's image that would take it

    def __str__(self) -> str:
        return f"{self.tag} is on image {self.holder}, not on this set's {self.image}"


def tag_conflicts(engine: Any, images: Sequence[Image], engine_ids: dict[int, str],
                  engine_ref: Callable[[str], str]) -> list[TagConflict]:
    """Tags of ``images`` that the engine has on another image (``engine_ids``: the images already present)."""
    found = []
    for image in images:
        for tag in image.tags:
            if "@" in tag:
                continue
            try:
                holder = engine.api.inspect_image(engine_ref(tag))["Id"]
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                raise LoadError(f"cannot look up {tag}: {exc.explanation or exc}") from exc
            if holder != engine_ids.get(image.number):
                found.append(TagConflict(tag, holder, image.id))
    return found
