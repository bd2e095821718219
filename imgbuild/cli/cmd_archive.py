"""`imgbuild archive`: write images (or a recipe's images) as a set of disc volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from imgbuild.archive.archive import ArchiveOptions, ArchiveResult, archive
from imgbuild.cli.common import EngineOpt, HostOpt, JsonOpt, VerboseOpt, app, cli_command, emit, progress_for
from imgbuild.engine.connect import connect
from imgbuild.foundation.errors import UsageError
from imgbuild.setformat import layout

MEDIA_HELP = ", ".join(f"{name} ({size // layout.MIB:,} MiB)" for name, size in layout.MEDIA_PROFILES.items())


def render_archive(result: ArchiveResult) -> Table | str:
    table = Table(title=f"set {result.set_id} ({result.name})"
                  + (" - already complete, nothing written" if result.already_complete else ""),
                  show_header=True, header_style="bold")
    table.add_column("volume")
    table.add_column("folder")
    for number, folder in enumerate(result.volumes, start=1):
        table.add_row(f"{number} of {len(result.volumes)}", str(folder))
    lines = [f"{', '.join(i['tags']) or i['id']}  {i['id']}" for i in result.images]
    ratio = result.compressed_bytes / result.uncompressed_bytes if result.uncompressed_bytes else 0
    table.caption = (
        "\n".join(lines)
        + f"\n{result.layers} layers, {result.uncompressed_bytes:,} bytes -> {result.compressed_bytes:,} bytes "
        f"({ratio:.0%}) in {result.seconds:.1f} s; media {result.media} ({result.capacity:,} bytes)"
        f"\nlayers read from: {result.layer_source}"
        + "".join(f"\n  {ref} went through the save API: {why}" for ref, why in result.fallbacks.items())
        + f"\ncatalog copy: {result.catalog}"
        + "".join(f"\nISO image: {path}" for path in result.isos)
    )
    return table


@app.command("archive")
@cli_command
def archive_command(
    sources: Annotated[list[str], typer.Argument(help="A recipe file, or image references (tags or ids).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder that receives one folder per volume.")],
    media: Annotated[str, typer.Option("--media", help=f"Media profile: {MEDIA_HELP}.")] = "bd25",
    media_size: Annotated[int | None, typer.Option("--media-size", help="Bytes per volume (overrides --media).")] = None,
    level: Annotated[int, typer.Option("--level", help="zstd compression level (-7..22).")] = 3,
    long: Annotated[bool, typer.Option("--long", help="zstd long-distance matching (128 MiB window).")] = False,
    catalog: Annotated[Path, typer.Option("--catalog", help="Folder for the catalog copy of the manifest.")] = Path(
        layout.CATALOG_DEFAULT),
    parity: Annotated[int, typer.Option("--parity", help="Parity volumes to add: any M lost or unreadable "
                                        "volumes of the set can then be rebuilt (imgbuild repair).")] = 0,
    iso: Annotated[bool, typer.Option("--iso", help="Also write one burnable ISO image per volume "
                                      "(OUT/FOLDER.iso, needs xorriso).")] = False,
    source: Annotated[str, typer.Option("--source", help="Where layers are read: storage (the engine's own "
                                        "layer storage, local engines only), api (its save API) or auto "
                                        "(storage when it can be read, else api).")] = "auto",
    engine: EngineOpt = "auto",
    host: HostOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Archive images onto disc-sized volumes: zstd, split, sha256 manifests, README and restore.sh on each."""
    if media_size is not None and media_size <= 0:
        raise UsageError("--media-size must be a positive number of bytes")
    if not 0 <= parity <= 64:
        raise UsageError("--parity must be 0..64")
    options = ArchiveOptions(out=out, media=media, media_size=media_size, level=level, long=long, catalog=catalog,
                             parity=parity, iso=iso, source=source)
    with progress_for(json_out, verbose) as progress, connect(engine, host, progress=progress) as found:
        result = archive(found, sources, options, progress=progress)
    emit(result, json_out, render_archive)
