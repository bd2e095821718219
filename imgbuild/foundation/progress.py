"""Progress reporting without a UI dependency.

The core reports through a plain callable; the CLI turns events into rich bars or nothing (--json, non-TTY).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ProgressEvent:
    """One step of progress.

    ``task`` names the unit of work ("download model.pth", "archive layer sha256:ab12..", "build base").
    ``done``/``total`` are in ``unit`` (bytes unless said otherwise); ``total`` is None when unknown.
    ``message`` carries a log line (a build step's output) and is shown as text, not as a bar.
    ``finished`` marks the end of the task.
    ``warning`` marks a message the user must see even when log lines are not shown.
    """

    task: str
    done: int = 0
    total: int | None = None
    unit: str = "bytes"
    message: str | None = None
    finished: bool = False
    warning: bool = False


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """A callback that ignores everything, the default of every core function."""
