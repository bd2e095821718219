"""The imgbuild command line: a typer app; each command group lives in its own module cli/cmd_*.py.

To add a command group, create imgbuild/cli/cmd_NAME.py that registers on `imgbuild.cli.common.app`
and list NAME in COMMAND_MODULES. A listed module that does not exist yet is skipped, so the CLI keeps
working while command groups are being written; any other import error is raised.
"""

from __future__ import annotations

import importlib

from imgbuild.cli.common import app

COMMAND_MODULES = ["cmd_recipe", "cmd_download", "cmd_plan", "cmd_archive", "cmd_restore", "cmd_repair", "cmd_inspect", "cmd_catalog", "cmd_push"]


def _register() -> None:
    for name in COMMAND_MODULES:
        module = f"{__name__}.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


_register()


def main() -> None:
    app(prog_name="imgbuild")


__all__ = ["app", "main"]
