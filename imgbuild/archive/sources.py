"""What `imgbuild archive` archives: a recipe (its base and app images, plus the recipe text and checkpoint
lock for the manifest) or image references, resolved to image ids through the engine."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from imgbuild.checkpoints.lockfile import lock_path_for
from imgbuild.engine.connect import Engine
from imgbuild.foundation.errors import ArchiveError, UsageError
from imgbuild.recipe.loader import load_recipe
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import RecipeInfo, TextFile

RECIPE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class SourceImage:
    ref: str
    id: str
    tags: list[str]
    role: str | None
    size: int


@dataclass(frozen=True)
class ResolvedSources:
    images: list[SourceImage]
    name: str
    recipe: RecipeInfo | None
    total_size: int | None


def _is_recipe(source: str) -> bool:
    return source.endswith(RECIPE_SUFFIXES) and Path(source).is_file()


def _text_file(path: Path) -> TextFile:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArchiveError(f"{path}: not UTF-8 text: {exc}") from exc
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.name).lstrip(".") or "recipe.yaml"
    return TextFile(name=name, sha256=hashlib.sha256(data).hexdigest(), text=text)


def _inspect(engine: Engine, ref: str, role: str | None) -> SourceImage:
    try:
        info = engine.api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        raise ArchiveError(f"image {ref} is not in the engine ({engine.kind} at {engine.host})",
                           hint="build it first (imgbuild build RECIPE) or check the name") from None
    except docker.errors.APIError as exc:
        raise ArchiveError(f"inspecting {ref} failed: {exc}") from exc
    tags = [t for t in info.get("RepoTags") or [] if "<none>" not in t]
    return SourceImage(ref=ref, id=str(info["Id"]), tags=sorted(tags), role=role, size=int(info.get("Size") or 0))


def _name_from(ref: str) -> str:
    base = ref.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", base).lstrip("._-")
    return cleaned[:64] or "images"


def resolve_sources(engine: Engine, sources: list[str]) -> ResolvedSources:
    """Sources are one recipe file or image references (tags or ids), in the order given."""
    if not sources:
        raise UsageError("name a recipe or at least one image to archive")
    missing = [s for s in sources if s.endswith(RECIPE_SUFFIXES) and not Path(s).is_file()]
    if missing:
        raise UsageError(f"recipe {missing[0]} does not exist")
    recipes = [s for s in sources if _is_recipe(s)]
    recipe_info = None
    if recipes:
        if len(sources) != 1:
            raise UsageError("archive takes either one recipe or image references, not both")
        loaded = load_recipe(recipes[0])
        wanted = [(loaded.recipe.base.tag, "base")]
        if loaded.recipe.app is not None:
            wanted.append((loaded.recipe.app.tag, "app"))
        lock = lock_path_for(loaded.path)
        recipe_info = RecipeInfo(recipe=_text_file(loaded.path),
                                 checkpoints_lock=_text_file(lock) if lock.is_file() else None)
        name = loaded.recipe.metadata.name
    else:
        wanted = [(ref, None) for ref in sources]
        name = _name_from(sources[0])
    images: list[SourceImage] = []
    for ref, role in wanted:
        image = _inspect(engine, ref, role)
        if all(image.id != seen.id for seen in images):
            images.append(image)
    if len(images) > layout.MAX_IMAGES:
        raise UsageError(f"a set holds at most {layout.MAX_IMAGES} images")
    total = sum(image.size for image in images) or None
    return ResolvedSources(images=images, name=name, recipe=recipe_info, total_size=total)
