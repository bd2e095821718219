"""`imgbuild plan RECIPE`: a dry run that prints what a build would use, without network or engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from imgbuild.cli.common import JsonOpt, app, cli_command, emit
from imgbuild.plan import Plan, PlanOptions, plan_recipe


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _value(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(value) if value else "-"
    return "-" if value is None else str(value)


def render_plan(plan: Plan) -> Group:
    mirrors = Table(title="mirrors", title_justify="left", show_edge=False)
    for col in ("setting", "value", "from"):
        mirrors.add_column(col)
    for m in plan.mirrors:
        mirrors.add_row(m.name, escape(_value(m.value)), m.source)

    images = Table(title="images", title_justify="left", show_edge=False)
    for col in ("role", "tag", "starts from", "containerfile", "build args"):
        images.add_column(col)
    for i in plan.images:
        args = "\n".join(f"{k}={v}" for k, v in i.args.items()) or "-"
        images.add_row(i.role, i.tag, escape(i.start), escape(i.containerfile), escape(args))

    files = Table(title=f"files in the build contexts ({_size(plan.context_bytes)})", title_justify="left",
                  show_edge=False)
    for col in ("role", "recipe key", "path", "dest", "size", "files"):
        files.add_column(col, justify="right" if col in ("size", "files") else "left")
    for f in plan.files:
        size = _size(f.bytes) + (" unpacked" if f.extract else "")
        files.add_row(f.role, f.key, escape(f.path), escape(f.dest or "-"), size, str(f.files))

    total = _size(plan.checkpoint_bytes)
    checkpoints = Table(title=f"checkpoints ({total}; lock {'present' if plan.lock_present else 'absent'}: "
                              f"{escape(plan.lock_file)})", title_justify="left", show_edge=False)
    for col in ("source", "name", "dest", "include", "commit", "size"):
        checkpoints.add_column(col, justify="right" if col == "size" else "left")
    for c in plan.checkpoints:
        commit = (c.commit or "")[:12] or ("-" if c.source == "local" else "not locked")
        checkpoints.add_row(c.source, escape(c.name), escape(c.dest), escape(", ".join(c.include) or "all"),
                            commit, _size(c.bytes))
    parts: list[object] = [f"[bold]{escape(plan.name)}[/bold] ({escape(plan.recipe)})", mirrors, images, files,
                           checkpoints]
    parts += [f"[yellow]note:[/yellow] {escape(n)}" for n in plan.notes]
    return Group(*parts)  # type: ignore[arg-type]


@app.command()
@cli_command
def plan(
    recipe: Annotated[Path, typer.Argument(help="Recipe file (YAML).")],
    json_out: JsonOpt = False,
) -> None:
    """Dry run: mirrors, build args, files and sizes, checkpoints and tags a build would use. No network."""
    emit(plan_recipe(recipe, PlanOptions()), json_out, render_plan)
