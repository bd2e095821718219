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




# The shared TTS base (the `base:` section of the fish-speech and SparkTTS recipes) as these machines can
# build it: torch 2.13.0 CPU (this host's find-links wheel) and torchaudio 2.11.0 without its compiled
# library, because no torch 2.3.1 or 2.5.1 CPU wheel can be fetched here. The end-to-end tests of the three
# recipes use it, so they build one base image, which stays on the engine between them.
TTS_BASE_ENV = {"TORCH_REQUIREMENT": "torch==2.13.0+cpu", "TORCHAUDIO_REQUIREMENT": "torchaudio==2.11.0",
                "TORCHAUDIO_EXTENSION": "drop", "TTS_BASE_TAG": "localhost/tts-cpu-base:torch2.13.0-test"}


def tts_base_env() -> dict[str, str]:
    """TTS_BASE_ENV, where a value already in the environment (set by hand or by CI) wins."""
    return {name: os.environ.get(name) or value for name, value in TTS_BASE_ENV.items()}


@pytest.fixture
def podman_cleanup():
    """(Podman engine, Cleanup) for tests that run on Podman only (conftest's `engine` runs a test on every
    engine); skipped or failed like `engine`. What the test registers with the Cleanup is removed after it."""
    from imgbuild.engine.connect import connect
    from tests.conftest import Cleanup

    host = os.environ.get("IMGBUILD_TEST_PODMAN_HOST")
    if not host:
        skip_or_fail('IMGBUILD_TEST_PODMAN_HOST is not set (eval "$(scripts/engines.sh start)")')
    with connect("podman", host) as engine:
        cleanup = Cleanup(engine)
        try:
            yield engine, cleanup
        finally:
            cleanup.run()
