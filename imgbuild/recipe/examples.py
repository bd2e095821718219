"""`imgbuild example`: the example recipes imgbuild ships, written into a folder with the files they name.

An example is a recipe of imgbuild/data/recipes/ (imgbuild.foundation.shipped). Writing it into DIR puts
the recipe at DIR/recipes/NAME.yaml and every shipped file or folder it names by a relative path (its
Containerfile, the runtime/ source) at the same place relative to DIR, so the recipe's paths hold there as
they do in a checkout:

    DIR/recipes/demo.yaml
    DIR/Containerfiles/tts-app.Containerfile
    DIR/runtime/pyproject.toml, DIR/runtime/imgbuild_runtime/*.py

Paths given through a variable (`${FISH_SPEECH_ZIP}`) or absolute ones are the user's and are not written.
A file already in DIR with the same bytes is left as it is; one with other bytes stops the run (nothing
overwritten) unless `overwrite` is set.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from imgbuild.foundation import shipped
from imgbuild.foundation.atomicfile import write_file_atomic
from imgbuild.foundation.errors import ExampleError, Remedy, UsageError
from imgbuild.recipe.loader import format_key, local_paths, parse_recipe_text

# What a checkout holds beside the shipped files (the wheel leaves them out through its package-data).
_NOT_SHIPPED = ("__pycache__", "*.pyc", "*.egg-info", ".*", "build", "dist")


@dataclass(frozen=True)
class ExampleInfo:
    name: str
    description: str
    items: tuple[str, ...]  # the recipe and the files and folders it names, relative to the folder written into
    files: tuple[str, ...]  # every file written, the recipe first

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "description": self.description, "items": list(self.items),
                "files": list(self.files)}


@dataclass(frozen=True)
class ExampleList:
    examples: tuple[ExampleInfo, ...]

    def to_json(self) -> dict[str, object]:
        return {"ok": True, "examples": [e.to_json() for e in self.examples]}


@dataclass(frozen=True)
class ExampleResult:
    name: str
    folder: str
    recipe: str  # the written recipe: what `imgbuild plan` and `imgbuild build` take
    written: tuple[str, ...]  # relative to folder
    unchanged: tuple[str, ...]  # already there with the same bytes

    def to_json(self) -> dict[str, object]:
        return {"ok": True, "name": self.name, "folder": self.folder, "recipe": self.recipe,
                "written": list(self.written), "unchanged": list(self.unchanged)}


class _NoVariables(Mapping[str, str]):
    """Every variable set and empty: `${VAR:-default}` takes its default and a path given as `${VAR}` becomes
    "", which is the user's to give and not one of the example's files."""

    def __getitem__(self, name: str) -> str:
        return ""

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _recipes() -> dict[str, Path]:
    folder = shipped.data_root() / shipped.RECIPES_DIR
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def _shipped(path: Path) -> bool:
    return not any(fnmatch.fnmatch(part, pattern) for part in path.parts for pattern in _NOT_SHIPPED)


def _files_under(root: Path, rel: PurePosixPath) -> list[PurePosixPath]:
    """The shipped files at `rel` (a file, or a folder's files) below the data root."""
    path = root / rel
    if path.is_file():
        return [rel]
    found = []
    for folder, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if _shipped(Path(d)))
        inner = PurePosixPath(Path(folder).relative_to(root).as_posix())
        found += [inner / name for name in sorted(files) if _shipped(Path(name))]
    return found


def _example(name: str, recipe: Path) -> ExampleInfo:
    """The example's description and files, read from the recipe text with its variables unset."""
    root = shipped.data_root()
    rel_recipe = PurePosixPath(shipped.RECIPES_DIR, recipe.name)
    parsed, _ = parse_recipe_text(recipe.read_text(encoding="utf-8"), str(rel_recipe), _NoVariables())
    items, files = [rel_recipe], [rel_recipe]
    for key, written in local_paths(parsed):
        if not written or written.startswith(("/", "~")):
            continue
        # Lexically, as the recipe's folder sees it: in a checkout the data folders are links.
        rel = PurePosixPath(os.path.normpath(rel_recipe.parent / written))
        if rel.parts[:1] == ("..",) or not (root / rel).exists():
            raise ExampleError(f"example {name}: {format_key(key)} names {written}, which imgbuild does not ship",
                               path=str(rel))
        items += [rel] if rel not in items else []
        files += [f for f in _files_under(root, rel) if f not in files]
    return ExampleInfo(name, parsed.metadata.description, tuple(str(i) for i in items), tuple(str(f) for f in files))


def list_examples() -> ExampleList:
    return ExampleList(tuple(_example(name, path) for name, path in _recipes().items()))


def write_example(name: str, folder: Path, overwrite: bool = False) -> ExampleResult:
    """Write example `name` into `folder` (made if missing); see the module docstring."""
    recipes = _recipes()
    if name not in recipes:
        raise UsageError(f"no example named {name!r}", hint=f"examples: {', '.join(recipes)}")
    info = _example(name, recipes[name])
    root = shipped.data_root()
    pending: list[tuple[str, bytes]] = []
    unchanged: list[str] = []
    for rel in info.files:
        data = (root / rel).read_bytes()
        target = folder / rel
        if target.is_file() and target.read_bytes() == data:
            unchanged.append(rel)
            continue
        if (target.exists() or target.is_symlink()) and not overwrite:
            raise ExampleError(f"{target} exists and differs from example {name}'s copy", path=str(target),
                               hint="choose another folder", remedy=Remedy.OVERWRITE)
        pending.append((rel, data))
    for rel, data in pending:  # only after every file was checked, so a refused run writes nothing
        write_file_atomic(folder / rel, data)
    return ExampleResult(name, str(folder), str(folder / info.files[0]), tuple(rel for rel, _ in pending),
                         tuple(unchanged))
