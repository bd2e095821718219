"""Recipe commands: `schema` (JSON Schema of the recipe format), `check`, `build`."""

from __future__ import annotations

import json
import sys

from imgbuild.cli.common import app, cli_command
from imgbuild.recipe_model import Recipe


@app.command()
@cli_command
def schema() -> None:
    """Print the JSON Schema of the recipe format (imgbuild/v1), for editor completion."""
    sys.stdout.write(json.dumps(Recipe.model_json_schema(by_alias=True), indent=2) + "\n")
