"""Restore commands: `verify`, `load`, `load-and-run`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from imgbuild.cli.common import (
    EngineOpt,
    HostOpt,
    JsonOpt,
    SetOpt,
    VerboseOpt,
    app,
    cli_command,
    emit,
    format_size,
    progress_for,
    stderr,
)
from imgbuild.engine.connect import connect
from imgbuild.foundation.errors import UsageError
from imgbuild.parity.damage import describe
from imgbuild.restore.layer_content import ContentSummary
from imgbuild.restore.load import LoadOptions, LoadResult, VolumeRequest, load_set
from imgbuild.restore.run import RunOptions, RunResult, load_and_run, parse_env
from imgbuild.restore.verify import VerifyOptions, VerifyReport, verify_set
from imgbuild.setformat import layout

DirsArg = Annotated[list[Path], typer.Argument(help="A set folder, or volume folders (discs), in any places.",
                                                show_default=False)]
ManifestOpt = Annotated[Path | None, typer.Option(
    "--manifest", help="Check against this catalog copy of the manifest (manifests/SETID.json), the root of trust.")]
PromptOpt = Annotated[bool, typer.Option("--prompt", help="Ask for each missing volume (disc) when it is needed.")]
RefuseDevicesOpt = Annotated[bool, typer.Option(
    "--refuse-devices", help="Refuse a set whose layers hold device nodes (verify: with --deep).")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Move the set's tags even when the engine has them on other images (refused otherwise).")]
WholeArchiveOpt = Annotated[bool, typer.Option(
    "--whole-archive", help="Send the set in one upload, even where the engine could import layers while the next "
                            "are read (Docker's classic store, Podman).")]


def content_line(summary: ContentSummary) -> str:
    return summary.describe() + (" (--json lists them)" if summary.counts else "")


def render_verify(report: VerifyReport) -> Table | str:
    lines = [f"set {report.name} ({report.set_id}), manifest {report.manifest_source}",
             f"volumes checked: {', '.join(map(str, report.volumes_checked)) or 'none'} of {report.volume_count}"]
    if report.volumes_not_given:
        lines.append(f"volumes not given (not checked): {', '.join(map(str, report.volumes_not_given))}")
    lines.append(f"{report.files_checked} files, {report.bytes_checked} bytes ({format_size(report.bytes_checked)}) "
                 f"read and hashed in {report.seconds:.2f} s, {format_size(report.throughput)}/s")
    if report.deep:
        lines.append(f"deep: {report.layers_checked} layers decompressed and their diff ids checked")
        if report.content is not None:
            lines.append(escape(content_line(report.content)))
    for problem in report.problems:
        lines.append(f"[red]BAD[/red] {escape(problem.path)}: {escape(problem.detail)}")
    if report.recovery is not None:
        lines += [escape(line) for line in describe(report.recovery)]
    lines.append("[green]OK[/green]: every file matches" if report.ok
                 else f"[red]FAILED[/red]: {len(report.problems)} problems")
    lines.append(f"check recorded in {escape(report.recorded)}" if report.recorded
                 else "check not recorded: no catalog copy of this set's manifest here (--catalog DIR)")
    return "\n".join(lines)


@app.command()
@cli_command
def verify(dirs: DirsArg, manifest: ManifestOpt = None, set_id: SetOpt = None,
           deep: Annotated[bool, typer.Option("--deep", help="Also decompress every layer and check its diff id.")]
           = False,
           catalog: Annotated[Path | None, typer.Option(
               "--catalog", help="Record this check in this catalog folder, beside the set's manifest copy "
               "(default: the folder of --manifest, else ./manifests).")] = None,
           refuse_devices: RefuseDevicesOpt = False,
           json_out: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Check volumes strictly against the set manifest and SHA256SUMS; exit 1 naming each bad file."""
    if refuse_devices and not deep:
        raise UsageError("--refuse-devices needs --deep (device nodes are found by decompressing the layers)")
    record_in = catalog or (manifest.parent if manifest else Path(layout.CATALOG_DEFAULT))
    with progress_for(json_out, verbose) as progress:
        report = verify_set(dirs, VerifyOptions(deep=deep, catalog=manifest, set_id=set_id, record_in=record_in,
                                                refuse_devices=refuse_devices), progress)
    emit(report, json_out, render_verify)
    if not report.ok:
        raise typer.Exit(1)


def ask_volume(request: VolumeRequest) -> Path | None:
    """Ask on the terminal for a volume's folder (the mount point of the disc); empty answer gives up."""
    stderr.print(f"[yellow]insert[/yellow] {escape(request.label)} ({escape(request.reason)})")
    stderr.print("folder of that volume (empty to give up): ", end="")
    answer = sys.stdin.readline().strip()
    return Path(answer) if answer else None


def render_load(result: LoadResult) -> str:
    lines = [f"set {result.name} ({result.set_id}) into {result.engine}: {result.layers_sent} layers, "
             f"{format_size(result.bytes_read)} read, {format_size(result.bytes_sent)} sent in {result.seconds:.1f} s"
             + (f" ({result.uploads} uploads)" if result.uploads > 1 else "")]
    for image in result.images:
        lines.append(f"{image.status:8} {image.id[:19]} {' '.join(image.tags)}")
    if result.layers_sent:
        lines.append(escape(content_line(result.content)))
    return "\n".join(lines)


@app.command()
@cli_command
def load(dirs: DirsArg, manifest: ManifestOpt = None, set_id: SetOpt = None,
         image: Annotated[list[str] | None, typer.Option("--image", help="Load only this image (tag, id, role).")]
         = None,
         prompt: PromptOpt = False, force: ForceOpt = False, refuse_devices: RefuseDevicesOpt = False,
         whole_archive: WholeArchiveOpt = False, engine: EngineOpt = "auto", host: HostOpt = None,
         json_out: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Load a set's images into the engine, checking every part as it streams; present images are skipped."""
    options = LoadOptions(catalog=manifest, images=tuple(image or ()), ask_volume=ask_volume if prompt else None,
                          set_id=set_id, force=force, refuse_devices=refuse_devices, whole_archive=whole_archive)
    with progress_for(json_out, verbose) as progress, connect(engine, host, progress=progress) as found:
        result = load_set(found, dirs, options, progress)
    emit(result, json_out, render_load)


def render_run(result: RunResult) -> str:
    if result.stopped:
        return f"stopped and removed {result.container_id[:12]} ({result.stop_reason})"
    lines = [f"{result.image} is healthy after {result.seconds_to_healthy:.1f} s: {result.url}"]
    if result.detached:
        lines.append(result.container_id)
    else:
        lines.append("press Ctrl-C to stop and remove it")
    return "\n".join(lines)


@app.command("load-and-run")
@cli_command
def load_and_run_command(
        dirs: DirsArg, manifest: ManifestOpt = None, set_id: SetOpt = None,
        image: Annotated[str | None, typer.Option("--image", help="Which image of the set to run (default: app).")]
        = None,
        port: Annotated[int | None, typer.Option("--port", help="Host port (default: the service's; 0: any free).")]
        = None,
        bind: Annotated[str, typer.Option("--bind", help="Host address the port is published on.")] = "127.0.0.1",
        detach: Annotated[bool, typer.Option("--detach", help="Leave it running and print the container id.")]
        = False,
        cpus: Annotated[float | None, typer.Option("--cpus", help="CPU limit, e.g. 1.5.")] = None,
        memory: Annotated[str | None, typer.Option("--memory", help="Memory limit, e.g. 4g.")] = None,
        env: Annotated[list[str] | None, typer.Option(
            "--env", "-e", help="NAME=VALUE for the service, over the recipe's serve env; repeatable.")] = None,
        health_timeout: Annotated[float | None, typer.Option(
            "--health-timeout", help="Seconds to wait for the health check (default: the recipe's).")] = None,
        prompt: PromptOpt = False, force: ForceOpt = False, refuse_devices: RefuseDevicesOpt = False,
        whole_archive: WholeArchiveOpt = False, engine: EngineOpt = "auto", host: HostOpt = None,
        json_out: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Load a set (skipping present images), start its app's serve command and wait until healthy."""
    load_options = LoadOptions(catalog=manifest, ask_volume=ask_volume if prompt else None, set_id=set_id,
                               force=force, refuse_devices=refuse_devices, whole_archive=whole_archive)
    run_options = RunOptions(image=image, bind=bind, port=port, cpus=cpus, memory=memory, detach=detach,
                             health_timeout=health_timeout, env=parse_env(env or []))

    def ready(result: RunResult) -> None:
        # --json prints one document, the final result (it holds the URL too); the URL is news now, so the
        # ready line goes to stderr in that mode.
        if json_out:
            typer.echo(render_run(result), err=True)
        else:
            emit(result, False, render_run)

    with progress_for(json_out, verbose) as progress, connect(engine, host, progress=progress) as found:
        result = load_and_run(found, dirs, load_options, run_options, progress, on_ready=ready)
    emit(result, json_out, render_run)
