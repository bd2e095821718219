"""`imgbuild plan RECIPE`: a dry run that prints what a build would use, without network or engine."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from imgbuild.build.plan import Plan, PlanOptions, plan_recipe
from imgbuild.cli.common import JsonOpt, app, cli_command, emit, format_size


def _value(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(value) if value else "-"
    return "-" if value is None else str(value)


def render_plan(plan: Plan) -> Group:
    mirrors = Table(title="mirrors", title_justify="left", show_edge=False)
    for col in ("setting", "value", "from"):
        mirrors.add_column(col, overflow="fold")
    for m in plan.mirrors:
        mirrors.add_row(m.name, escape(_value(m.value)), m.source)

    # Images as indented blocks: their build args are long URLs that a table would squeeze into slivers.
    images = ["[bold]images[/bold]"]
    for i in plan.images:
        images.append(f"  {i.role}: [bold]{escape(i.tag)}[/bold]")
        images.append(f"    from: {escape(i.start)}")
        images.append(f"    containerfile: {escape(i.containerfile)}")
        images += [f"    --build-arg {escape(shlex.quote(f'{k}={v}'))}" for k, v in i.args.items()]

    files = Table(title=f"files in the build contexts ({format_size(plan.context_bytes)})", title_justify="left",
                  show_edge=False)
    for col in ("path", "to", "size", "files"):
        files.add_column(col, justify="right" if col in ("size", "files") else "left", overflow="fold")
    for f in plan.files:
        size = format_size(f.bytes) + (" unpacked" if f.extract else "")
        files.add_row(escape(f.path), escape(f.dest or "-"), size, str(f.files))

    lock = f"lock {'present' if plan.lock_present else 'absent'}: {escape(plan.lock_file)}"
    checkpoints = [f"[bold]checkpoints[/bold] ({format_size(plan.checkpoint_bytes)}; {lock})"]
    for c in plan.checkpoints:
        state = f"commit {c.commit[:12]}" if c.commit else ("local folder" if c.source == "local" else "not locked")
        checkpoints.append(f"  {c.source} {escape(c.name)} -> {escape(c.dest)}  ({format_size(c.bytes)}, {state})")
        if c.include or c.exclude:
            checkpoints.append(f"    include: {escape(', '.join(c.include) or 'all')}"
                               + (f"; exclude: {escape(', '.join(c.exclude))}" if c.exclude else ""))
        checkpoints += [f"    {format_size(size):>10}  {escape(path)}" for path, size in c.files]
    parts: list[object] = [f"[bold]{escape(plan.name)}[/bold] ({escape(plan.recipe)})", mirrors, "\n".join(images),
                           files, "\n".join(checkpoints)]
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
