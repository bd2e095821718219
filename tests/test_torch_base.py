"""The CPU-only torch base (recipes/torch-cpu-base.yaml) builds for real on one engine and torch runs in it.

One engine is enough (the build path is the same on both, tests/test_build.py covers both); Podman is
used because it is the story's engine. The torch CPU wheel comes from this host's pip find-links, as a
user on this machine would pass it. Under CI a missing engine or wheel fails the test instead of skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgbuild import hostconfig
from imgbuild.bootstrap import find_image
from imgbuild.build import BuildOptions, build_recipe
from imgbuild.engines import connect
from imgbuild.recipe import load_recipe
from tests.conftest import ENGINE_HOST_VARS, REPO_ROOT, UniqueTag, in_ci, remove_image

RECIPE = REPO_ROOT / "recipes" / "torch-cpu-base.yaml"
WHEEL_GLOB = "torch-2.13.0+cpu-cp311-*.whl"
SIZE_GOAL = 2_000_000_000  # bytes: the goal for the base, against the story's 8.72 GB
TORCH_LINE = "import torch; print(torch.ones(2) @ torch.ones(2))"


def skip_or_fail(message: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true but {message}")
    pytest.skip(message)


def host_torch_wheels() -> Path:
    """The folder of this host's pip find-links that holds the torch CPU wheel."""
    for link in hostconfig.pip_config().find_links:
        folder = Path(link.removeprefix("file://"))
        if folder.is_dir() and any(folder.glob(WHEEL_GLOB)):
            return folder
    skip_or_fail(f"no {WHEEL_GLOB} in this host's pip find-links (`pip config list`)")
    raise AssertionError("unreachable")


def run_once(engine, image: str, command: list[str]) -> tuple[int, str]:
    """Run a command in a fresh container without network; return (exit code, output); remove it."""
    container = engine.api.create_container(image, command, network_disabled=True)["Id"]
    try:
        engine.api.start(container)
        code = engine.api.wait(container, timeout=300)["StatusCode"]
        return code, engine.api.logs(container, stdout=True, stderr=True).decode(errors="replace")
    finally:
        engine.api.remove_container(container, force=True)


@pytest.mark.slow
@pytest.mark.engine
def test_torch_cpu_base_builds_and_runs_torch(tmp_path: Path) -> None:
    host = os.environ.get(ENGINE_HOST_VARS["podman"])
    if not host:
        skip_or_fail(f"{ENGINE_HOST_VARS['podman']} is not set (eval \"$(scripts/engines.sh start)\")")
    wheels = host_torch_wheels()
    tag = UniqueTag()("torch-cpu-base")
    recipe = tmp_path / "torch-cpu-base.yaml"
    recipe.write_text(RECIPE.read_text().replace("localhost/torch-cpu-base:2.13.0", tag))
    loaded = load_recipe(recipe, {**os.environ, "TORCH_CPU_WHEELS": str(wheels)})

    with connect("podman", host) as engine:
        built: list[str] = []
        try:
            result = build_recipe(loaded, engine, BuildOptions())
            built = [image.tag for image in result.images]
            base = result.image("base")
            assert base is not None and base.tag == tag

            code, output = run_once(engine, tag, ["python3", "-c", TORCH_LINE])
            assert code == 0, output
            assert "tensor(2.)" in output
            code, output = run_once(engine, tag, ["python3", "-c",
                                                  "import torch; print(torch.__version__, torch.version.cuda)"])
            assert code == 0 and output.split()[:2] == ["2.13.0+cpu", "None"], output

            size = find_image(engine, tag)["Size"]
            print(f"torch-cpu-base image size: {size} bytes ({size / 1e9:.2f} GB)")
            assert size <= SIZE_GOAL, f"CPU torch base is {size / 1e9:.2f} GB, goal {SIZE_GOAL / 1e9:.1f} GB"
        finally:
            for ref in reversed(built):
                remove_image(engine, ref)
        assert find_image(engine, tag) is None
