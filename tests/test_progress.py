"""Long steps report progress: verify, parity (archive --parity) and repair emit done/total events that grow to
the total and end finished; the CLI draws bars only on a terminal, never for --json or a pipe."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from imgbuild.cli.common import _AmountColumn, _RichProgress, _SpeedColumn
from imgbuild.foundation.progress import ProgressEvent
from imgbuild.parity.volumes import ParityOptions, add_parity_volumes
from imgbuild.restore.repair import RepairOptions, repair_set
from imgbuild.restore.verify import verify_set
from imgbuild.setformat import layout
from tests.support.synthetic_set import make_set, write_metadata

MIB = 1024 * 1024
IMGBUILD = Path(sys.executable).parent / "imgbuild"


def bars_of(events: list[ProgressEvent], task: str) -> list[ProgressEvent]:
    """The events of one task that carry an amount, checked to grow to their total and end finished."""
    bars = [e for e in events if e.task.startswith(task) and e.total is not None]
    assert len(bars) >= 4, f"{task}: {len(bars)} progress events for a multi-MiB step"
    dones = [e.done for e in bars]
    assert dones == sorted(dones) and dones[0] < bars[-1].total
    assert bars[-1].finished and bars[-1].done == bars[-1].total
    return bars


def synthetic(root: Path, events: list[ProgressEvent]):  # type: ignore[no-untyped-def]
    manifest = make_set(root, [3 * MIB + 5, 5 * MIB, 2 * MIB])
    manifest = add_parity_volumes(lambda k: root / layout.volume_folder(manifest.set_id, k), manifest,
                                  ParityOptions(1, chunk_size=MIB), events.append)
    write_metadata(root, manifest)
    return manifest


def test_verify_parity_and_repair_report_progress(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    root = tmp_path / "set"
    manifest = synthetic(root, events)
    assert bars_of(events, "parity")[-1].total >= 5 * MIB

    events.clear()
    assert verify_set([root], progress=events.append).ok
    assert bars_of(events, "verify")[-1].total >= 10 * MIB

    shutil.rmtree(root / manifest.volumes[1].folder)
    events.clear()
    result = repair_set([root], RepairOptions(out=tmp_path / "out", chunk_size=MIB), events.append)
    assert result.check is not None and result.check.ok
    bars_of(events, "repair")


def run_cli(args: list[str], tty: bool) -> tuple[str, str]:
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    if not tty:
        done = subprocess.run([str(IMGBUILD), *args], capture_output=True, text=True, timeout=120, env=env)
        return done.stdout, done.stderr
    # `script` gives the command a terminal; its output is what a person would see.
    command = " ".join([str(IMGBUILD), *args])
    done = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True, timeout=120,
                          env=env)
    return done.stdout, done.stderr


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux's script for a terminal")
def test_bars_only_on_a_terminal(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_metadata(root, make_set(root, [40 * MIB, 40 * MIB]))
    out, err = run_cli(["verify", str(root), "--json"], tty=False)
    assert json.loads(out)["ok"] is True and err == ""  # --json: data on stdout, no bar, no message
    out, err = run_cli(["verify", str(root)], tty=False)
    assert "OK" in out and "━" not in out + err  # a pipe: no bar
    out, _ = run_cli(["verify", str(root)], tty=True)
    assert "verify" in out and "━" in out  # a terminal: rich's bar


def test_each_bar_counts_in_its_tasks_unit() -> None:
    """A build's steps show as "3/7 steps", bytes as sizes with a speed, side by side in one display."""
    bars = Progress(_AmountColumn(), _SpeedColumn(), console=Console(file=io.StringIO(), force_terminal=True))
    show = _RichProgress(bars, show_messages=False)
    show(ProgressEvent(task="build app", done=3, total=7, unit="steps"))
    show(ProgressEvent(task="download model.pth", done=3 << 20, total=8 << 20))
    steps, data = bars.tasks
    assert str(_AmountColumn().render(steps)) == "3/7 steps"
    assert str(_SpeedColumn().render(steps)) == ""
    assert "MB" in str(_AmountColumn().render(data)) and "steps" not in str(_AmountColumn().render(data))
