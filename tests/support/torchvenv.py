"""Tests that run upstream model code on the host: the fixture source zips and .venv-torch.

.venv-torch (scripts/setup.sh, setup_torch.sh) holds CPU torch and the model sources' dependencies, apart
from .venv. The source zips are in IMGBUILD_FIXTURES (.ci/run sets it). Without either a test skips with
the reason; under CI it fails.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TORCH_PYTHON = REPO_ROOT / ".venv-torch" / "bin" / "python"
# pyrootutils (a fish-speech dependency in .venv-torch) installs a top-level `tests` package, which would
# hide this repository's `tests` (a namespace package) from that Python: name ours first.
PRELUDE = (f"import sys, types; tests = types.ModuleType('tests'); tests.__path__ = [{str(REPO_ROOT / 'tests')!r}]; "
           f"sys.modules['tests'] = tests; sys.path.insert(0, {str(REPO_ROOT)!r}); ")


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def fixture_zip(name: str) -> Path:
    """An upstream source zip from IMGBUILD_FIXTURES."""
    folder = os.environ.get("IMGBUILD_FIXTURES")
    if not folder:
        skip_or_fail("IMGBUILD_FIXTURES is not set (the folder of the upstream source zips; .ci/run sets it)")
    path = Path(folder) / name
    if not path.is_file():
        skip_or_fail(f"{name} is not in IMGBUILD_FIXTURES={folder}")
    return path


def torch_python(*modules: str) -> str:
    """.venv-torch's Python, when it imports torch and `modules`."""
    python = str(TORCH_PYTHON)
    probe = "import torch" + "".join(f", {m}" for m in modules)
    if not TORCH_PYTHON.exists() or subprocess.run([python, "-c", probe], capture_output=True).returncode != 0:
        skip_or_fail(f"{TORCH_PYTHON} cannot `{probe}` (scripts/setup.sh makes .venv-torch)")
    return python


def make_standin(python: str, model: str, out: Path, *args: str) -> Path:
    """`python -m tests.support.standins MODEL OUT ARGS...` in the torch Python; returns OUT."""
    code = PRELUDE + "from tests.support.standins.__main__ import main; main(sys.argv[1:])"
    done = subprocess.run([python, "-c", code, model, str(out), *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=1200, check=False)
    assert done.returncode == 0, f"making the {model} stand-in failed:\n{done.stderr[-3000:]}"
    return out


