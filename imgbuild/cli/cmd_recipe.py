"""Recipe commands: `schema` (JSON Schema of the recipe format, or of the set manifest), `check`, `build`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from imgbuild.build.build import BuildOptions, BuildResult, build_recipe
from imgbuild.cli.common import EngineOpt, HostOpt, JsonOpt, VerboseOpt, app, cli_command, emit, progress_for, stderr
from imgbuild.engine.connect import connect
from imgbuild.recipe.loader import LoadedRecipe, load_recipe
from imgbuild.recipe.model import Recipe
from imgbuild.setformat.manifest import json_schema as manifest_json_schema

RecipeArg = Annotated[Path, typer.Argument(help="Recipe file (YAML, apiVersion: imgbuild/v1).")]


@app.command()
@cli_command
def schema(
    manifest: Annotated[bool, typer.Option("--manifest", help="The set manifest's schema (imgbuild-set.json) "
                                            "instead of the recipe's.")] = False,
) -> None:
    """Print the JSON Schema of the recipe format (imgbuild/v1), for editor completion, or with --manifest
    the schema of an archive set's manifest (FORMAT.md)."""
    document = manifest_json_schema() if manifest else Recipe.model_json_schema(by_alias=True)
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


class _Checked:
    def __init__(self, loaded: LoadedRecipe) -> None:
        self.loaded = loaded

    def to_json(self) -> dict[str, object]:
        r = self.loaded.recipe
        return {"ok": True, "recipe": r.metadata.name, "path": str(self.loaded.path),
                "images": [t for t in (r.base.tag, r.app.tag if r.app else None) if t]}


@app.command()
@cli_command
def check(recipe: RecipeArg, json_out: JsonOpt = False) -> None:
    """Validate a recipe: keys, types, interpolation, referenced files. Exit 1 with file:line if wrong."""
    loaded = load_recipe(recipe)
    emit(_Checked(loaded), json_out,
         lambda c: f"[green]ok[/green] {c.loaded.path}: recipe {c.loaded.recipe.metadata.name!r}")


def render_build(result: BuildResult) -> Table:
    table = Table(title=f"recipe {result.recipe} on {result.engine['kind']} {result.engine['version']}",
                  title_justify="left")
    for column in ("role", "tag", "id", "cached", "seconds"):
        table.add_column(column, overflow="fold")  # a tag is copied from here: never cut it short
    for image in result.images:
        table.add_row(image.role, image.tag, image.id.removeprefix("sha256:")[:12],
                      "yes" if image.cached else "built", f"{image.seconds:.1f}")
    return table


@app.command()
@cli_command
def build(
    recipe: RecipeArg,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Rebuild every layer even if its inputs are unchanged.")] = False,
    constraints: Annotated[str | None, typer.Option(
        "--constraints", metavar="FROM_IMAGE_OR_FILE",
        help="Install exactly these Python package versions: a pip freeze file, or an image built by imgbuild "
             "(the versions it recorded in /opt/imgbuild/pip-installed.txt).")] = None,
    engine: EngineOpt = "auto",
    host: HostOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Build the base and app images of a recipe (live build log; unchanged layers are reused)."""
    loaded = load_recipe(recipe)
    with progress_for(json_out, verbose) as progress, connect(engine, host, progress=progress) as eng:
        if not json_out:
            stderr.print(f"engine: {eng.kind} {eng.version} at {eng.host}", highlight=False)
        result = build_recipe(loaded, eng, BuildOptions(rebuild=rebuild, constraints=constraints), progress)
    emit(result, json_out, render_build)
