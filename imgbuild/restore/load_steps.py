"""Load in steps: the engine imports one group of layers while the next group is read from the volumes.

Neither engine imports anything of an upload before it has all of it: Docker's classic image store (moby's
image/tarexport Load) untars the whole body into a temporary folder before it reads manifest.json, and Podman
writes the body to a temporary file before containers/image reads it. One archive of the whole set is
therefore imported only after its last byte was read from the discs. Here the layers go out in several
uploads ("steps"), each holding the next layers in read order, about ``step_bytes`` of volume data; each
upload's manifest.json lists images whose other layers earlier steps loaded, sent as empty members:

- Docker's classic store looks each layer up by chain id and opens the layer's file only when it is missing
  (tarexport Load; the image store then holds the chain);
- Podman's docker-archive reader (containers/image docker/internal/tarfile) wants every listed layer file in
  the tar, but copying asks the storage first (TryReusingBlob: a layer with that uncompressed digest) and
  then does not read the file.

Should a layer vanish between two steps, the engine reads the empty member, whose digest is not the layer's
diff id, and refuses the step: a step can fail but never load other bytes.

While step k's layers are read, the engine imports step k-1: step k's body holds back its configs and
manifest.json until step k-1's request has returned, so the layers it marks present are there. The set's
own images are created by the last step only, so a failed load leaves none of them. Earlier steps create
step images: a config with the first layers of one of the set's images, no history (so Podman takes none of
them as the parent of another image) and the label org.imgbuild.load-step=SET_ID. They keep the layers loaded
so far; each is removed once a later step's image holds its layers, and any left when the load ends, failed
or interrupted (Ctrl-C) alike. Their ids follow from the set, so a rerun that loads the same images removes
those a killed load left as its own; a failed or interrupted load also removes any others of the set (found
by the label).

Docker's containerd image store takes every layer file an archive lists into its content store, empty or
not: loaded in steps (Docker 26.1), the images' manifests named the empty blob as their earlier layers, so
`docker save` wrote those layers empty and the image ids (manifest digests) differed from a whole load's.
There, and when a layer follows different layers in two images, the set goes out as one archive. A layer
read before its parent (Docker 26 writes an image's top layer first) goes in its parent's step.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from contextlib import contextmanager
from dataclasses import dataclass

import docker.errors

from imgbuild.engine.connect import Engine
from imgbuild.engine.docker_archive import ArchiveImage, ArchiveLayer, DockerArchive, docker_archive
from imgbuild.engine.image_ids import describe, image_store
from imgbuild.foundation.errors import LoadError

STEP_LABEL = "org.imgbuild.load-step"
# Steps are at least MIN_STEP_BYTES of volume data (half a second at an optical drive's 35 MB/s, which hides
# the engine's fixed cost of a load request) and at most MAX_STEPS: the import of the last step, which no
# reading overlaps, then stays a small share of the whole, and a fast disk is not slowed by many requests.
MIN_STEP_BYTES = 16 * 1024 * 1024
MAX_STEPS = 32


@dataclass(frozen=True)
class Step:
    """One upload: ``layers`` sent in it (read order), ``present`` loaded by earlier steps, and the images its
    manifest.json lists (step images, or the set's own images in the last step)."""

    layers: tuple[str, ...]
    present: tuple[str, ...]
    images: tuple[ArchiveImage, ...]

    def image_ids(self) -> list[str]:
        return ["sha256:" + hashlib.sha256(image.config).hexdigest() for image in self.images]


def send_images(engine: Engine, set_id: str, images: list[ArchiveImage], read_order: Sequence[tuple[str, int]],
                layers: Callable[[], dict[str, ArchiveLayer]], post: Callable[[DockerArchive], None],
                whole_archive: bool = False, step_bytes: int = 0) -> int:
    """Load ``images``, whose layers (``layers()``, opened once) are read in ``read_order``, through ``post``:
    in steps where the engine allows it, else as one archive. Returns how many uploads went out."""
    steps = [] if whole_archive else plan_steps(engine, set_id, images, read_order, step_bytes)
    if len(steps) < 2:
        post(docker_archive(images, layers()))
        return 1
    with step_images_removed(engine, set_id) as held:
        load_in_steps(engine, steps, layers(), post, held)
    return len(steps)


def plan_steps(engine: Engine, set_id: str, images: Sequence[ArchiveImage], read_order: Sequence[tuple[str, int]],
               step_bytes: int = 0) -> list[Step]:
    """The steps that load ``images`` whose layers are read in ``read_order`` ((diff id, bytes read) pairs),
    each about ``step_bytes`` (0: chosen from the total); one step (the whole archive) where steps cannot work
    (see the module's description)."""
    whole = [Step(tuple(d for d, _ in read_order), (), tuple(images))]
    if image_store(engine) not in ("classic", "podman"):
        return whole
    step_bytes = step_bytes or max(MIN_STEP_BYTES, sum(size for _, size in read_order) // MAX_STEPS)
    return _plan(set_id, images, read_order, step_bytes) or whole


def _plan(set_id: str, images: Sequence[ArchiveImage], read_order: Sequence[tuple[str, int]],
          step_bytes: int) -> list[Step] | None:
    chain_of: dict[str, tuple[str, ...]] = {}  # diff id -> its image's layers up to and including it
    template: dict[str, bytes] = {}
    for image in images:
        for index, diff_id in enumerate(image.diff_ids):
            if chain_of.setdefault(diff_id, image.diff_ids[:index + 1]) != image.diff_ids[:index + 1]:
                return None  # the same layer on other parents: Docker's classic store holds it twice
            template.setdefault(diff_id, image.config)
    if {diff_id for diff_id, _ in read_order} != set(chain_of):
        return None
    # A group ends after step_bytes, but only where every layer read so far has its parent read too: a layer
    # on disc before its parent goes in the parent's step.
    groups: list[list[str]] = [[]]
    size = 0
    seen: set[str] = set()
    waiting: set[str] = set()  # read, parent not yet read
    for diff_id, read in read_order:
        groups[-1].append(diff_id)
        size += read
        seen.add(diff_id)
        if len(chain_of[diff_id]) > 1 and chain_of[diff_id][-2] not in seen:
            waiting.add(diff_id)
        waiting = {d for d in waiting if chain_of[d][-2] not in seen}
        if size >= step_bytes and not waiting:
            groups.append([])
            size = 0
    if not groups[-1]:
        groups.pop()
    if len(groups) < 2:
        return None
    steps: list[Step] = []
    loaded: list[str] = []
    for group in groups:
        if group is groups[-1]:
            step_images = tuple(images)
        else:
            parents = {chain_of[d][-2] for d in group if len(chain_of[d]) > 1}
            step_images = tuple(ArchiveImage(_step_config(set_id, template[d], chain_of[d]), chain_of[d])
                                for d in group if d not in parents)
        used = {d for image in step_images for d in image.diff_ids}
        steps.append(Step(tuple(group), tuple(d for d in loaded if d in used), step_images))
        loaded += group
    return steps


def _step_config(set_id: str, template: bytes, diff_ids: tuple[str, ...]) -> bytes:
    """A step image's config: the platform of the image it is taken from, the label, these layers."""
    source = json.loads(template)
    config = {key: source[key] for key in ("architecture", "os", "variant") if source.get(key)}
    config.update({"config": {"Labels": {STEP_LABEL: set_id}}, "created": "1970-01-01T00:00:00Z",
                   "rootfs": {"type": "layers", "diff_ids": list(diff_ids)}})
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


class _Stopped(Exception):
    """A step's body stopped because an earlier step failed or the load was interrupted."""


def load_in_steps(engine: Engine, steps: Sequence[Step], layers: dict[str, ArchiveLayer],
                  post: Callable[[DockerArchive], None], held: set[str]) -> None:
    """Send ``steps`` (``post`` sends one body and returns when the engine has imported it), step k's layers
    read while step k-1 is imported. ``held`` gets the ids of the step images that may be in the engine.
    Raises the first step's error; all requests have ended when it returns."""
    stop = threading.Event()
    futures: list[Future[None]] = []
    alive: list[tuple[ArchiveImage, str]] = []  # step images loaded (or being loaded) and not yet superseded
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="imgbuild-load-step") as pool:
        try:
            for step in steps:
                layers_read = threading.Event()
                previous = futures[-1] if futures else None
                body = docker_archive(
                    list(step.images), {d: _stoppable(layers[d], stop) for d in step.layers}, step.present,
                    before_tail=lambda read=layers_read, previous=previous: _after_previous(read, previous, stop))
                superseded = [(image, image_id) for image, image_id in alive
                              if any(other.diff_ids[:len(image.diff_ids)] == image.diff_ids for other in step.images)]
                alive = [entry for entry in alive if entry not in superseded]
                if step is not steps[-1]:
                    alive += zip(step.images, step.image_ids())
                    held.update(step.image_ids())
                futures.append(pool.submit(_run_step, engine, post, body, [i for _, i in superseded], held))
                while not layers_read.wait(0.1) and not futures[-1].done():
                    _raise_first(futures, done_only=True)  # an earlier step failed: stop reading this one
                _raise_first(futures, done_only=True)
            wait_all(futures)
            _raise_first(futures, done_only=False)
        except BaseException:
            stop.set()
            wait_all(futures)
            _raise_first(futures, done_only=False)
            raise


def _run_step(engine: Engine, post: Callable[[DockerArchive], None], body: DockerArchive,
              superseded: list[str], held: set[str]) -> None:
    """One step's request; then its images hold the layers of ``superseded`` step images, which go."""
    post(body)
    for image_id in superseded:
        if _remove(engine, image_id) is None:
            held.discard(image_id)


def _after_previous(layers_read: threading.Event, previous: Future[None] | None, stop: threading.Event) -> None:
    layers_read.set()
    while previous is not None and not stop.is_set():
        try:
            previous.result(timeout=0.1)
            break
        except TimeoutError:
            continue
        except BaseException:  # noqa: BLE001 - the earlier step's own future reports it
            raise _Stopped("an earlier step failed") from None
    if stop.is_set():
        raise _Stopped("the load was stopped")


def _stoppable(layer: ArchiveLayer, stop: threading.Event) -> ArchiveLayer:
    def chunks() -> Iterator[bytes]:
        for chunk in layer.open():
            if stop.is_set():
                raise _Stopped("the load was stopped")
            yield chunk
    return ArchiveLayer(layer.diff_id, layer.size, chunks)


def _raise_first(futures: Iterable[Future[None]], done_only: bool) -> None:
    """Raise the error of the first step that failed on its own (not merely stopped after another)."""
    for future in futures:
        if done_only and not future.done():
            continue
        error = future.exception()
        if error is not None and not isinstance(error, _Stopped):
            raise error


@contextmanager
def step_images_removed(engine: Engine, set_id: str) -> Iterator[set[str]]:
    """Yields the set that load_in_steps fills with its step images' ids; on the way out removes those still
    there. After a failure or an interruption, also those of the set that an earlier, killed load left (found
    by their label). Only a load that succeeded fails when one cannot be removed."""
    held: set[str] = set()
    try:
        yield held
    except BaseException:
        _remove_all(engine, held, set_id)
        raise
    failed = [f"{image_id}: {error}" for image_id in sorted(held) if (error := _remove(engine, image_id)) is not None]
    if failed:
        raise LoadError(f"{describe(engine)}: step images of the load could not be removed: " + "; ".join(failed),
                        hint=f"remove the untagged images labelled {STEP_LABEL}={set_id}")


def _remove_all(engine: Engine, held: set[str], set_id: str) -> None:
    """Best effort, on the way out of a failed load: its step images, and any others of the set."""
    ids = set(held)
    if image_store(engine) in ("classic", "podman"):
        try:
            listed = engine.api.images(all=True, filters={"label": f"{STEP_LABEL}={set_id}"})
        except docker.errors.APIError:  # Podman fails a listing while another client removes an image
            listed = []
        ids |= {str(image["Id"]) for image in listed if (image.get("Labels") or {}).get(STEP_LABEL) == set_id}
    for image_id in ids:
        _remove(engine, image_id)


def _remove(engine: Engine, image_id: str) -> str | None:
    """Remove one step image (not its layers while another image uses them); the error, or None."""
    try:
        engine.api.remove_image(image_id)
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as exc:
        return str(exc.explanation or exc)
    return None
