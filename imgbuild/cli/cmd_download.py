"""`imgbuild download RECIPE`: lock the recipe's checkpoints and fetch them, resumable and verified."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from imgbuild.checkpoints.download import DownloadOptions, DownloadResult, download_checkpoints
from imgbuild.checkpoints.transfer import TransferOptions
from imgbuild.cli.common import JsonOpt, VerboseOpt, app, cli_command, emit, format_size, progress_for
from imgbuild.recipe.loader import load_recipe


def render_download(result: DownloadResult) -> Table:
    table = Table(title=f"checkpoints locked in {result.lock_path.name}"
                        f"{' (updated)' if result.lock_changed else ''}", show_edge=False)
    for column in ("file", "size", "action", "fetched"):
        table.add_column(column, justify="right" if column in ("size", "fetched") else "left")
    for f in result.files:
        table.add_row(f"{f.dest}/{f.path}", format_size(f.size), f.action, format_size(f.fetched))
    rate = result.fetched_bytes / result.seconds if result.seconds else 0
    table.caption = (f"{len(result.files)} files, {format_size(result.total_bytes)}; fetched {format_size(result.fetched_bytes)}"
                     f" in {result.seconds:.1f} s ({format_size(int(rate))}/s); lock sha256 {result.lock_sha256[:16]}")
    return table


@app.command()
@cli_command
def download(
    recipe: Annotated[Path, typer.Argument(help="The recipe file.")],
    update: Annotated[bool, typer.Option("--update", help="Resolve every entry again and rewrite the lock.")] = False,
    verify_all: Annotated[bool, typer.Option("--verify-all", help="Re-hash finished files too.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Files fetched at the same time.")] = 4,
    connections: Annotated[int, typer.Option(
        "--connections", min=1, help="Byte ranges of one big file fetched at the same time (links that limit "
        "each connection).")] = 1,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Lock the recipe's checkpoints (RECIPE.lock.json beside it) and download them into the cache.

    A killed download continues from the bytes on disk on the next run.
    """
    loaded = load_recipe(recipe, os.environ)
    options = DownloadOptions(update=update, verify_all=verify_all, workers=workers,
                              transfer=TransferOptions(connections=connections))
    with progress_for(json_out, verbose) as progress:
        result = download_checkpoints(loaded, options, progress)
    emit(result, json_out, render_download)
