"""What every command shares: the typer app, option types, error mapping, output and progress.

A command module does:

    from imgbuild.cli.common import app, JsonOpt, VerboseOpt, cli_command, emit, progress_for

    @app.command()
    @cli_command
    def verify(path: Path, json_out: JsonOpt = False, verbose: VerboseOpt = False) -> None:
        with progress_for(json_out, verbose) as progress:
            result = core_function(path, Options(...), progress=progress)
        emit(result, json_out, render_verify)

Errors (ImgbuildError) become one message on stderr and the error's exit code (1, or 2 for UsageError)
here, in one place; IMGBUILD_TRACEBACK=1 prints the traceback as well.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text
from typer.core import TyperGroup
from typer.rich_utils import rich_format_error

try:  # typer 0.2x parses with its own copy of click; earlier typer with click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

from imgbuild import __version__
from imgbuild.foundation.errors import BuildFailed, ImgbuildError, OptionError, Remedy
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent


class _JsonUsageErrors(TyperGroup):
    """With --json, arguments the parser refuses (exit code 2) also give one JSON document on stdout."""

    def main(self, args: Any = None, *rest: Any, standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or "--json" not in argv:
            return super().main(argv, *rest, standalone_mode=standalone_mode, **extra)
        try:
            result = super().main(argv, *rest, standalone_mode=False, **extra)
        except ClickException as exc:
            rich_format_error(exc)
            sys.stdout.write(json.dumps({"ok": False, "error": {"type": "UsageError", "message": exc.format_message(),
                                                               "exit_code": exc.exit_code}}, indent=2) + "\n")
            sys.exit(exc.exit_code)
        except typer.Abort:
            stderr.print("[bold red]aborted[/bold red]")
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)  # standalone_mode=False returns Exit's code


app = typer.Typer(
    cls=_JsonUsageErrors,
    name="imgbuild",
    help="Turn a YAML recipe into container images, archive them onto optical discs, load and run them offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show every log line on stderr.")]
EngineOpt = Annotated[
    str, typer.Option("--engine", help="auto, docker or podman.", envvar="IMGBUILD_ENGINE", show_default=True)
]
SetOpt = Annotated[str | None, typer.Option(
    "--set", help="Which set, when the folders hold volumes of several (its id, as in the volume folder names).")]
HostOpt = Annotated[
    str | None,
    typer.Option("--host", help="Engine URL (unix://, tcp://, ssh://); default DOCKER_HOST, then usual sockets."),
]



def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"imgbuild {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Turn a YAML recipe into container images, archive them onto optical discs, load and run them offline."""


stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


# The option that makes the choice a core error points to: option names live here, not in the core.
REMEDY_HINTS = {
    Remedy.CHOOSE_SET: "choose one with --set SETID",
    Remedy.CHOOSE_IMAGE: "choose one with --image NAME",
    Remedy.MOVE_TAGS: "--force moves the tags (the other images stay, without these names)",
    Remedy.ASK_FOR_VOLUMES: "--prompt asks for each disc when it is needed",
    Remedy.OTHER_OUT: "choose another --out",
    Remedy.GIVE_CATALOG: "`imgbuild archive --catalog DIR` writes one; give it with --catalog DIR",
    Remedy.OVERWRITE: "--force overwrites them",
    Remedy.GIVE_ENGINE_HOST: "or name its socket with --host",
    Remedy.GIVE_MEDIA_SIZE: "or give --media-size BYTES",
    Remedy.NAME_TAG: "name it with --tag NAME:TAG",
    Remedy.PUSH_FIRST: "push the set first: imgbuild push DIR --registry REGISTRY",
    Remedy.GIVE_CA_FILE: "give the registry's CA with --ca-file",
    Remedy.RELOCK: "`imgbuild download --update RECIPE` locks it again",
}
# The flag of each options field an OptionError names.
OPTION_FLAGS = {"engine": "--engine", "media": "--media", "level": "--level", "source": "--source", "tags": "--tag",
                "layer_format": "--layer-format", "replicas": "--replicas", "env": "--env"}


def message_of(exc: ImgbuildError) -> str:
    """The error's message; an options value is named by its flag."""
    if isinstance(exc, OptionError):
        return f"{OPTION_FLAGS.get(exc.option, exc.option)} {exc.reason}"
    return str(exc)


def hint_of(exc: ImgbuildError) -> str | None:
    """The error's own hint and the option that makes the choice it points to."""
    parts = [part for part in (exc.hint, REMEDY_HINTS.get(exc.remedy) if exc.remedy else None) if part]
    return "; ".join(parts) or None


def report_error(exc: BaseException) -> None:
    """Write one error as a message on stderr: what failed, the log tail of a build, the hint."""
    if os.environ.get("IMGBUILD_TRACEBACK") == "1":
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, BuildFailed) and exc.log_tail:
        stderr.print("[dim]--- last lines of the build log ---[/dim]", highlight=False)
        for line in exc.log_tail:
            stderr.print(escape(line), highlight=False)
    if isinstance(exc, ImgbuildError):
        stderr.print(f"[bold red]error:[/bold red] {escape(message_of(exc))}", highlight=False)
        hint = hint_of(exc)
        if hint:
            stderr.print(f"[yellow]hint:[/yellow] {escape(hint)}", highlight=False)
    else:
        stderr.print(f"[bold red]unexpected error:[/bold red] {escape(type(exc).__name__)}: {escape(str(exc))}",
                     highlight=False)
        stderr.print("[yellow]hint:[/yellow] this is a bug in imgbuild; IMGBUILD_TRACEBACK=1 shows where",
                     highlight=False)


def format_size(size: float | None) -> str:
    """A byte count for people: binary units (KiB = 1,024 bytes), like the media sizes; "?" when unknown."""
    if size is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _error_json(exc: BaseException, kwargs: dict[str, Any]) -> None:
    """With --json, a failed command still prints one JSON document on stdout: the error and its context
    fields (the message went to stderr as well)."""
    if not kwargs.get("json_out"):
        return
    plain = (str, int, float, bool, type(None))
    context = {k: v for k, v in vars(exc).items() if not k.startswith("_") and isinstance(v, plain)}
    error = {"type": type(exc).__name__, **context, "message": str(exc),
             "exit_code": getattr(exc, "exit_code", 1)}
    if isinstance(exc, ImgbuildError):
        error.update(message=message_of(exc), hint=hint_of(exc))
    sys.stdout.write(json.dumps({"ok": False, "error": error}, indent=2) + "\n")
    sys.stdout.flush()


def cli_command(fn: F) -> F:
    """Map errors raised by a command to a message and an exit code (0 ok, 1 failure, 2 usage)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except ImgbuildError as exc:
            report_error(exc)
            _error_json(exc, kwargs)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            stderr.print("[bold red]interrupted[/bold red]")
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the one place where anything becomes a message
            report_error(exc)
            _error_json(exc, kwargs)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def emit(result: Any, json_mode: bool, render: Callable[[Any], RenderableType | str]) -> None:
    """Print a result: its to_json() as JSON on stdout, or the rich rendering of it."""
    if json_mode:
        sys.stdout.write(json.dumps(result.to_json(), indent=2, sort_keys=False) + "\n")
        sys.stdout.flush()
    else:
        stdout.print(render(result), highlight=False)


class _RichProgress:
    """Turns ProgressEvents into rich bars on stderr; log messages are printed above the bars."""

    def __init__(self, progress: Progress | None, show_messages: bool) -> None:
        self.progress = progress
        self.show_messages = show_messages
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.message is not None:
            if self.show_messages or event.warning:
                console = self.progress.console if self.progress else stderr
                console.print(escape(event.message), style="yellow" if event.warning else "dim", highlight=False)
            if not event.total and not event.done and not event.finished:
                return
        if self.progress is None:
            return
        task = self.tasks.get(event.task)
        if task is None:
            if event.finished and not event.done:
                return
            task = self.progress.add_task(event.task, total=event.total, completed=event.done, unit=event.unit)
            self.tasks[event.task] = task
        self.progress.update(task, completed=event.done, total=event.total)
        if event.finished:
            self.progress.update(task, completed=event.total or event.done, total=event.total or event.done)


class _AmountColumn(ProgressColumn):
    """Done and total in the task's own unit: bytes as sizes, anything else ("steps", "files") as counts."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes = DownloadColumn()
        self.counts = MofNCompleteColumn()

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "bytes")
        if unit == "bytes":
            return self.sizes.render(task)
        counts = self.counts.render(task)
        counts.append(f" {unit}")
        return counts


class _SpeedColumn(ProgressColumn):
    """Bytes per second for tasks counted in bytes; nothing for other units."""

    def __init__(self) -> None:
        super().__init__()
        self.speed = TransferSpeedColumn()

    def render(self, task: Task) -> Text:
        return self.speed.render(task) if task.fields.get("unit", "bytes") == "bytes" else Text("")


@contextmanager
def progress_for(json_mode: bool, verbose: bool) -> Iterator[ProgressCallback]:
    """A progress callback: bars on a TTY, each in its task's unit (ProgressEvent.unit); log lines on a TTY
    or with -v; nothing for --json (unless -v)."""
    tty = stderr.is_terminal
    show_messages = verbose or (tty and not json_mode)
    if not tty or json_mode:
        yield _RichProgress(None, show_messages)  # without messages it still prints warnings
        return
    columns = [TextColumn("{task.description}"), BarColumn(), _AmountColumn(), _SpeedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=stderr, transient=True) as bars:
        yield _RichProgress(bars, show_messages)
