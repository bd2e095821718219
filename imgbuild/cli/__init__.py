"""The imgbuild command line: a typer app; each command group lives in its own module cli/cmd_*.py.

To add a command group, create imgbuild/cli/cmd_NAME.py that registers on `imgbuild.cli.common.app`
and map its commands to it in COMMANDS. A listed module that cannot be imported is an error: a command that
silently went missing would look like a user's typo.

``main()`` imports only the module of the command it runs (a load need not import the build machinery:
about half a second at every start); ``--help``, a mistyped name and ``imgbuild.cli.app`` import them all.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from typing import Any

from imgbuild.cli import common

# Each command, and the module that registers it.
COMMANDS = {
    "schema": "cmd_recipe", "check": "cmd_recipe", "build": "cmd_recipe", "download": "cmd_download",
    "plan": "cmd_plan", "archive": "cmd_archive", "verify": "cmd_restore", "load": "cmd_restore",
    "load-and-run": "cmd_restore", "repair": "cmd_repair", "inspect": "cmd_inspect", "catalog": "cmd_catalog",
    "push": "cmd_push", "kube": "cmd_push", "example": "cmd_example",
}
COMMAND_MODULES = list(dict.fromkeys(COMMANDS.values()))


def _register(modules: Iterable[str] | None = None) -> None:
    for name in COMMAND_MODULES if modules is None else modules:
        importlib.import_module(f"{__name__}.{name}")


def __getattr__(name: str) -> Any:
    if name == "app":
        _register()
        return common.app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    # The root takes no option with a value (only --version), so the first word is the command's name.
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    _register([COMMANDS[command]] if command in COMMANDS else None)
    common.app(prog_name="imgbuild")


__all__ = ["app", "main"]
