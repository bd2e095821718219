"""Build a recipe's images (base layer, then app layer) through an engine's API, with input-hash caching.

Each layer's input hash covers everything that shapes it: the Containerfile and the rest of the build
context (CA certificates, wheels, app files), the build args and the id of the image it starts from. It
is stored as the label org.imgbuild.input-hash; a layer whose tag already carries the same hash is reused
instead of rebuilt, unless --rebuild. Logs stream live through the progress callback.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import docker.errors

from imgbuild import __version__
from imgbuild.build.bootstrap import BootstrapOptions, bootstrap_image
from imgbuild.build.constraints import load_constraints
from imgbuild.build.context import (
    EffectiveMirrors,
    app_build_args,
    assemble,
    base_build_args,
    hash_tree,
    resolve_mirrors,
    with_registry,
)
from imgbuild.build.sbom import image_sbom, sidecar_path
from imgbuild.checkpoints.stage import checkpoint_inputs
from imgbuild.engine.connect import Engine
from imgbuild.engine.images import find_image, image_labels, split_tag
from imgbuild.foundation.cachedir import default_cache_dir
from imgbuild.foundation.errors import BuildFailed, EngineError, SbomError
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent, no_progress
from imgbuild.recipe.loader import LoadedRecipe

LABEL = "org.imgbuild."
LOG_TAIL_LINES = 40
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # Docker Engine colours a RUN step's stderr
# Podman prefixes the steps of a multi-stage build with the stage: "[2/3] STEP 4/5: COPY ...".
_STEP = re.compile(r"^(?:\[\d+/\d+\]\s+)?(?:Step|STEP)\s+(\d+)/(\d+)\s*:?\s*(.*)$")


@dataclass(frozen=True)
class BuildOptions:
    rebuild: bool = False  # rebuild every layer, without the engine's layer cache
    host_defaults: bool = True  # fill mirrors the recipe leaves unset from this host's configuration
    cache_dir: Path | None = None  # rootfs cache; None means imgbuild.build.bootstrap.default_cache_dir()
    # Files or folders staged into the app layer as app/DEST, e.g. downloaded checkpoints: (src, dest).
    extra_context: tuple[tuple[Path, str], ...] = ()
    extra_app_labels: dict[str, str] = field(default_factory=dict)  # e.g. org.imgbuild.checkpoints-lock
    # A file in pip freeze format, or an image whose recorded versions (imgbuild.build.constraints) pip must install.
    constraints: str | None = None


@dataclass(frozen=True)
class ImageResult:
    role: str  # "rootfs", "base" or "app"
    tag: str
    id: str
    cached: bool
    input_hash: str
    seconds: float

    def to_json(self) -> dict[str, object]:
        return {"role": self.role, "tag": self.tag, "id": self.id, "cached": self.cached,
                "input_hash": self.input_hash, "seconds": round(self.seconds, 1)}


@dataclass(frozen=True)
class BuildResult:
    recipe: str
    engine: dict[str, str]
    images: tuple[ImageResult, ...]
    mirrors: dict[str, object]
    seconds: float

    def image(self, role: str) -> ImageResult | None:
        return next((i for i in self.images if i.role == role), None)

    def to_json(self) -> dict[str, object]:
        return {"recipe": self.recipe, "engine": self.engine, "images": [i.to_json() for i in self.images],
                "mirrors": self.mirrors, "seconds": round(self.seconds, 1)}


def rootfs_tag(base_tag: str) -> str:
    """The imported rootfs is named after the base so that removing a recipe's images finds it."""
    repo, _ = split_tag(base_tag)
    return f"{repo}-rootfs:latest"


def input_hash(role: str, context_hash: str, args: dict[str, str], from_id: str, labels: dict[str, str]) -> str:
    inputs = {"role": role, "context": context_hash, "args": args, "from": from_id, "labels": labels}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def build_recipe(loaded: LoadedRecipe, engine: Engine, options: BuildOptions = BuildOptions(),
                 progress: ProgressCallback = no_progress) -> BuildResult:
    """Build (or reuse) the base and app images of a recipe on one engine."""
    started = time.monotonic()
    recipe = loaded.recipe
    mirrors = resolve_mirrors(loaded, options.host_defaults)
    images: list[ImageResult] = []
    pins = None
    if options.constraints is not None:
        pins = load_constraints(options.constraints, engine)
        progress(ProgressEvent(task="constraints", message=f"{pins.pins} pinned versions from {pins.source}"))

    if recipe.base.bootstrap is not None:
        t0 = time.monotonic()
        mirror = recipe.base.bootstrap.mirror or mirrors.apt
        if not mirror:
            raise loaded.error("no apt mirror for bootstrap: set mirrors.apt (this host has no apt sources)",
                               ("base", "bootstrap"))
        boot = bootstrap_image(engine, recipe.base.bootstrap,
                               BootstrapOptions(mirror=mirror, tag=rootfs_tag(recipe.base.tag),
                                                cache_dir=options.cache_dir or Path()), progress)
        images.append(ImageResult("rootfs", boot.tag, boot.image_id, boot.image_cached, boot.key,
                                  time.monotonic() - t0))
        base_from, base_identity = boot.tag, "rootfs:" + boot.key
    else:
        base_from, base_identity = with_registry(recipe.base.from_ or "", mirrors.registry), None

    base = _build_layer(loaded, engine, "base", base_from, mirrors, options, {}, progress, base_identity,
                        pins.text if pins else None)
    images.append(base)
    if recipe.app is not None:
        if recipe.app.checkpoints:  # lock, download and verify them, then place them under the app folder
            found = checkpoint_inputs(loaded, progress=progress)
            options = replace(options, extra_context=options.extra_context + found.extra_context,
                              extra_app_labels={**options.extra_app_labels, **found.labels})
        app_from = base.tag if recipe.app.from_ == "base" else with_registry(recipe.app.from_, mirrors.registry)
        labels = {LABEL + "serve": json.dumps(recipe.app.serve.model_dump(mode="json"), sort_keys=True),
                  **options.extra_app_labels}
        images.append(_build_layer(loaded, engine, "app", app_from, mirrors, options, labels, progress,
                                   pip_constraints=pins.text if pins else None))
    for image in images:
        if image.role in ("base", "app"):
            _record_sbom(engine, image, progress)
    return BuildResult(recipe.metadata.name, engine.to_json(), tuple(images), mirrors.to_json(),
                       time.monotonic() - started)


def _record_sbom(engine: Engine, image: ImageResult, progress: ProgressCallback) -> None:
    """What the image holds, kept beside it (imgbuild/build/sbom.py) so `archive` and `inspect` find it."""
    task = f"build {image.role}"
    try:
        image_sbom(engine, image.id, [image.tag], image.role)
    except SbomError as exc:
        progress(ProgressEvent(task=task, message=f"no SBOM: {exc.message}"))
        return
    progress(ProgressEvent(task=task, message=f"{image.tag}: SBOM {sidecar_path(image.id)}"))


def _build_layer(loaded: LoadedRecipe, engine: Engine, role: str, from_ref: str, mirrors: EffectiveMirrors,
                 options: BuildOptions, labels: dict[str, str], progress: ProgressCallback,
                 from_identity: str | None = None, pip_constraints: str | None = None) -> ImageResult:
    """Build one layer unless its tag already carries the same input hash. `from_identity` stands for the
    starting image in the hash (a rootfs key survives re-imports, which change the image id);
    `pip_constraints` (a constraints file's text) goes into the context, so it is part of the hash."""
    t0 = time.monotonic()
    layer = loaded.recipe.base if role == "base" else loaded.recipe.app
    assert layer is not None
    make_args = base_build_args if role == "base" else app_build_args
    args = make_args(loaded, mirrors, from_ref)
    from_info = None if from_identity else find_image(engine, from_ref)
    from_id = from_identity or (from_info["Id"] if from_info else from_ref)  # not local: the engine pulls it
    # The context lives in imgbuild's cache folder, next to downloaded checkpoints, so that big files can be
    # hard-linked into it instead of copied.
    contexts = (options.cache_dir or default_cache_dir()) / "contexts"
    contexts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{role}-", dir=contexts) as tmp:
        context = Path(tmp)
        assemble(loaded, role, mirrors, context, options.extra_context if role == "app" else (), pip_constraints)
        digest = input_hash(role, hash_tree(context), args, from_id, labels)
        existing = find_image(engine, layer.tag)
        if existing and image_labels(existing).get(LABEL + "input-hash") == digest and not options.rebuild:
            progress(ProgressEvent(task=f"build {role}", message=f"{layer.tag}: inputs unchanged, reusing it"))
            return ImageResult(role, layer.tag, existing["Id"], True, digest, time.monotonic() - t0)
        all_labels = {
            LABEL + "recipe": loaded.recipe.metadata.name, LABEL + "role": role, LABEL + "input-hash": digest,
            LABEL + "version": __version__, LABEL + "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **labels,
        }
        # Build stages that must not outlive the build (python-base's venv stage holds the wheels) are
        # labelled with this id, which stays out of the input hash.
        build_id = uuid.uuid4().hex
        stage_args = {BUILD_ID_ARG: build_id} if BUILD_ID_ARG in (context / "Containerfile").read_text() else {}
        try:
            image_id = run_build(engine, context, layer.tag, args | stage_args, all_labels,
                                 nocache=options.rebuild, task=f"build {role}", progress=progress)
        finally:
            if stage_args:
                remove_stage_images(engine, build_id)
    return ImageResult(role, layer.tag, image_id, False, digest, time.monotonic() - t0)


BUILD_ID_ARG = "IMGBUILD_BUILD_ID"


def remove_stage_images(engine: Engine, build_id: str) -> None:
    """Remove the untagged stage images of one build (their untagged parents go with them)."""
    for image in engine.api.images(all=True, filters={"label": f"{LABEL}build-id={build_id}"}):
        if any(tag != "<none>:<none>" for tag in image.get("RepoTags") or ()):
            continue  # never a tagged image, even if a Containerfile lets the label reach its final stage
        try:
            engine.api.remove_image(image["Id"])
        except docker.errors.APIError:
            pass  # already gone, or still used by another build: the engine's usual cleanup applies


# Podman's layer-cache lookup fails this way when another client removes an image during the lookup (shared
# engines, tests cleaning up in parallel). The build itself is fine; running it again succeeds.
_STORAGE_RACE = re.compile(r"(layer|image) not known")


def run_build(engine: Engine, context: Path, tag: str, args: dict[str, str], labels: dict[str, str], *,
              nocache: bool = False, task: str = "build", progress: ProgressCallback = no_progress) -> str:
    """Run one build through the low-level API, streaming its log; return the image id."""
    try:
        return _run_build_once(engine, context, tag, args, labels, nocache, task, progress)
    except BuildFailed as exc:
        if engine.kind != "podman" or not _STORAGE_RACE.search(exc.reason):
            raise
        progress(ProgressEvent(task=task, message=f"podman storage race ({exc.reason}); building again"))
        return _run_build_once(engine, context, tag, args, labels, nocache, task, progress)


def _run_build_once(engine: Engine, context: Path, tag: str, args: dict[str, str], labels: dict[str, str],
                    nocache: bool, task: str, progress: ProgressCallback) -> str:
    tail: list[str] = []
    step = None
    pending = ""

    def log(text: str) -> None:
        nonlocal step, tail
        for line in _ANSI.sub("", text).splitlines():
            line = line.rstrip()
            if not line:
                continue
            tail = (tail + [line])[-LOG_TAIL_LINES:]
            match = _STEP.match(line)
            if match:
                step = f"step {match.group(1)}/{match.group(2)}: {match.group(3)}"
                progress(ProgressEvent(task=task, done=int(match.group(1)) - 1, total=int(match.group(2)),
                                       unit="steps"))
            progress(ProgressEvent(task=task, message=line))

    try:
        stream = engine.api.build(path=str(context), dockerfile="Containerfile", tag=tag, buildargs=args,
                                  labels=labels, rm=True, forcerm=True, pull=False, nocache=nocache, decode=True)
        for chunk in stream:
            if "stream" in chunk:
                # Chunks may end mid-line; only complete lines are logged.
                pending += chunk["stream"]
                complete, _, pending = pending.rpartition("\n")
                log(complete)
            if chunk.get("error") or chunk.get("errorDetail"):
                log(pending)
                reason = chunk.get("error") or chunk["errorDetail"].get("message", "")
                raise BuildFailed(reason.strip(), step=step, log_tail=tail)
    except docker.errors.BuildError as exc:
        raise BuildFailed(str(exc.msg), step=step, log_tail=tail) from None
    except docker.errors.APIError as exc:
        raise BuildFailed(str(exc.explanation or exc), step=step, log_tail=tail) from None
    log(pending)
    info = find_image(engine, tag)
    if info is None:
        raise EngineError(f"{engine.host}: the build of {tag} ended but the image is not there",
                          hint="the last lines of the log: " + " | ".join(tail[-5:]))
    progress(ProgressEvent(task=task, finished=True, unit="steps"))
    return info["Id"]
