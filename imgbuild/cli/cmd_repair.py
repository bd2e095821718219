"""`imgbuild repair`: rebuild damaged or missing volumes of a set from its parity volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from imgbuild.cli.common import JsonOpt, SetOpt, VerboseOpt, app, cli_command, emit, format_size, progress_for
from imgbuild.parity.damage import describe
from imgbuild.restore.repair import RepairOptions, RepairResult, repair_set


def render_repair(result: RepairResult) -> str:
    lines = [f"set {escape(result.name)} ({result.set_id})"]
    lines += [escape(line) for line in describe(result.recovery)]
    if not result.rebuilt:
        lines.append("[green]OK[/green]: nothing was damaged or missing, nothing written")
        return "\n".join(lines)
    for folder in result.rebuilt:
        lines.append(f"rebuilt: {escape(str(folder))}")
    for iso in result.isos:
        lines.append(f"ISO image: {escape(str(iso))}")
    lines.append(f"{format_size(result.bytes_decoded)} decoded ({format_size(result.decode_throughput)}/s in the decoder), "
                 f"{format_size(result.bytes_copied)} copied, {result.seconds:.1f} s in all")
    if result.check is not None:
        lines.append(f"[green]OK[/green]: the rebuilt volumes verify ({result.check.files_checked} files); use them "
                     "together with the intact volumes")
    return "\n".join(lines)


@app.command("repair")
@cli_command
def repair_command(
    dirs: Annotated[list[Path], typer.Argument(help="The set folder, volume folders or .iso images at hand.",
                                               show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder that receives the rebuilt volume folders.")],
    manifest: Annotated[Path | None, typer.Option(
        "--manifest", help="Trust this catalog copy of the manifest (manifests/SETID.json).")] = None,
    iso: Annotated[bool, typer.Option("--iso", help="Also write an ISO image of each rebuilt volume.")] = False,
    set_id: SetOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Rebuild only the damaged or missing volumes of a set (needs its parity volumes), then verify them."""
    options = RepairOptions(out=out, catalog=manifest, iso=iso, set_id=set_id)
    with progress_for(json_out, verbose) as progress:
        result = repair_set(dirs, options, progress=progress)
    emit(result, json_out, render_repair)
