"""Recipes for checkpoint tests: written as YAML files and loaded the way the CLI loads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_recipe(folder: Path, checkpoints: list[dict[str, Any]], mirror: str | None = None,
                 name: str = "demo") -> Path:
    """A recipe file with an app layer made only of the given checkpoint entries."""
    recipe: dict[str, Any] = {
        "apiVersion": "imgbuild/v1",
        "kind": "Recipe",
        "metadata": {"name": name},
        "base": {"tag": f"localhost/{name}-base:1", "from": "scratch"},
        "app": {"tag": f"localhost/{name}-app:1", "checkpoints": checkpoints},
    }
    if mirror:
        recipe["mirrors"] = {"huggingface": mirror}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(recipe, indent=2))  # JSON is YAML
    return path


def load(path: Path) -> Any:
    """The loaded recipe (imgbuild.recipe.loader.load_recipe when it is there)."""
    try:
        from imgbuild.recipe.loader import load_recipe
    except ImportError:
        return _loaded_from_model(path)
    import os

    return load_recipe(path, dict(os.environ))


def _loaded_from_model(path: Path) -> Any:
    from types import SimpleNamespace

    from imgbuild.recipe.model import Recipe

    recipe = Recipe.model_validate(json.loads(path.read_text()))
    return SimpleNamespace(recipe=recipe, path=path, folder=path.parent)
