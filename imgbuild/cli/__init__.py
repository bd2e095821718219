"""The imgbuild command line: a typer app; each command group lives in its own module cli/cmd_*.py.

To add a command group, create imgbuild/cli/cmd_NAME.py that registers on `imgbuild.cli.common.app`
and list NAME in COMMAND_MODULES. A listed module that cannot be imported is an error: a command that
silently went missing would look like a user's typo.
"""

from __future__ import annotations

import importlib

from imgbuild.cli.common import app

COMMAND_MODULES = ["cmd_recipe", "cmd_download", "cmd_plan", "cmd_archive", "cmd_restore", "cmd_repair", "cmd_inspect", "cmd_catalog", "cmd_push", "cmd_example"]


def _register() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}")


_register()


def main() -> None:
    app(prog_name="imgbuild")


__all__ = ["app", "main"]
