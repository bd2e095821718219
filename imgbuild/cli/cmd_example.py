"""`imgbuild example [NAME [DIR]]`: list the example recipes imgbuild ships, or write one with its files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from imgbuild.cli.common import JsonOpt, app, cli_command, emit
from imgbuild.recipe.examples import ExampleList, ExampleResult, list_examples, write_example


def _files(count: int) -> str:
    return f"{count} file{'s' if count != 1 else ''}"


def render_list(listed: ExampleList) -> Table:
    table = Table(title="examples (imgbuild example NAME DIR writes one)", title_justify="left", show_edge=False)
    for column in ("name", "description", "writes"):
        table.add_column(column, overflow="fold")
    for e in listed.examples:
        table.add_row(escape(e.name), escape(e.description), escape(f"{', '.join(e.items)} ({_files(len(e.files))})"))
    return table


def render_result(result: ExampleResult) -> str:
    head = (f"example [bold]{escape(result.name)}[/bold] in {escape(result.folder)}: "
            f"{_files(len(result.written))} written, {len(result.unchanged)} already there")
    lines = [head]
    lines += [f"  {escape(rel)}" for rel in result.written]
    lines += ["next:", f"  imgbuild plan {escape(result.recipe)}", f"  imgbuild build {escape(result.recipe)}"]
    return "\n".join(lines)


@app.command("example")
@cli_command
def example_command(
    name: Annotated[str | None, typer.Argument(help="The example to write; leave out to list them.")] = None,
    folder: Annotated[Path | None, typer.Argument(help="Folder to write it into (default: ./NAME).",
                                                  show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files in the folder that differ.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The example recipes imgbuild ships: list them, or write one into a folder with the Containerfiles and
    sources it names, ready for `imgbuild plan` and `imgbuild build`."""
    if name is None:
        emit(list_examples(), json_out, render_list)
        return
    emit(write_example(name, folder if folder is not None else Path(name), overwrite=force), json_out,
         render_result)
