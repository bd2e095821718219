"""`imgbuild inspect DIR...|IMAGE`: what a set or an image holds (its SBOM, summarized)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from imgbuild.cli.common import EngineOpt, HostOpt, JsonOpt, SetOpt, VerboseOpt, app, cli_command, emit, progress_for
from imgbuild.restore.inspect import InspectOptions, InspectResult, inspect_target


def render_inspect(result: InspectResult) -> str:
    head = f"set {result.set_id} (format {result.format_version})" if result.set_id else f"image {result.source}"
    lines = [escape(head)]
    if result.note:
        lines.append(escape(result.note))
    for contents in result.images:
        lines.append(escape(contents.summary_lines(limit=200)))
        licences: dict[str, int] = {}
        for _, _, names in contents.debs + contents.python:
            for name in names or ("not stated",):
                licences[name] = licences.get(name, 0) + 1
        common = sorted(licences.items(), key=lambda item: -item[1])[:12]
        lines.append(escape("    licences (packages): " + ", ".join(f"{name} {count}" for name, count in common)))
    if result.checkpoints_lock:
        for entry in result.checkpoints_lock.get("checkpoints", []):
            lines.append(escape(f"checkpoints lock: {entry.get('repo') or entry.get('path')} "
                                f"@ {entry.get('commit') or 'local'} -> {entry.get('dest')}"))
    return "\n".join(lines)


@app.command("inspect")
@cli_command
def inspect_command(
    targets: Annotated[list[str], typer.Argument(help="A set's volume folders, or one image (tag or id).",
                                                 show_default=False)],
    manifest: Annotated[Path | None, typer.Option(
        "--manifest", help="Check against this catalog copy of the manifest (manifests/SETID.json).")] = None,
    set_id: SetOpt = None,
    engine: EngineOpt = "auto",
    host: HostOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """What is inside: Debian and Python packages with versions and licences, model files, licences that
    limit use, from the SBOM (CycloneDX) each image carries."""
    with progress_for(json_out, verbose) as progress:
        result = inspect_target(targets, InspectOptions(catalog=manifest, engine=engine, host=host, set_id=set_id), progress)
    emit(result, json_out, render_inspect)
