"""Reproducible Python dependencies (imgbuild.build.constraints): the versions a build installed are recorded in the
image, and `imgbuild build --constraints FROM_IMAGE_OR_FILE` installs those versions again.

Unit tests check parsing, errors and the build context; the engine test builds a python-base image with an
old `six`, then rebuilds a recipe that asks for `six` unpinned with --constraints pointing at that image:
the rebuild must install the recorded old version, not the newest one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgbuild.build.bootstrap import BootstrapOptions, bootstrap_image
from imgbuild.build.constraints import RECORD_PATH, load_constraints, parse
from imgbuild.build.context import PIP_DIR, assemble, hash_tree, resolve_mirrors
from imgbuild.cli import app as cli
from imgbuild.foundation import hostconfig
from imgbuild.foundation.errors import ConstraintsError
from imgbuild.recipe.loader import load_recipe
from imgbuild.recipe.model import Bootstrap
from tests.conftest import ENGINE_HOST_VARS
from tests.support.torchvenv import podman_cleanup  # noqa: F401  (a fixture)

FREEZE = "# from a build\nnumpy==1.26.4\ntorch==2.13.0+cpu\n\nfish-speech==0.1.0\n"


def test_parse_counts_pins_and_keeps_the_text() -> None:
    pins = parse(FREEZE, "freeze.txt")
    assert pins.pins == 3 and pins.text == FREEZE
    assert pins.to_json() == {"source": "freeze.txt", "pins": 3}


@pytest.mark.parametrize("line", ["numpy>=1.26", "-e git+https://example.invalid/x.git#egg=x",
                                  "x @ file:///tmp/x.whl", "--index-url http://mirror"])
def test_parse_refuses_anything_but_exact_pins_naming_the_line(line: str) -> None:
    with pytest.raises(ConstraintsError, match=r"constraints f.txt: line 2 is not a name==version pin") as info:
        parse(f"six==1.16.0\n{line}\n", "f.txt")
    assert info.value.line == 2 and info.value.source == "f.txt"


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConstraintsError, match="no name==version pins"):
        load_constraints(str(tmp_path / "empty.txt"), None)


def test_a_name_that_is_no_file_needs_an_engine() -> None:
    with pytest.raises(ConstraintsError, match="not a file, and no engine"):
        load_constraints("localhost/no-such-image:1", None)


def test_constraints_reach_the_context_and_change_its_hash(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text('apiVersion: imgbuild/v1\nkind: Recipe\nmetadata: {name: r}\n'
                      'base: {tag: "localhost/r:1", from: "scratch", pip: [six]}\n')
    loaded = load_recipe(recipe, {})
    mirrors = resolve_mirrors(loaded, host_defaults=False)
    plain, pinned = tmp_path / "plain", tmp_path / "pinned"
    plain.mkdir()
    pinned.mkdir()
    assemble(loaded, "base", mirrors, plain)
    assemble(loaded, "base", mirrors, pinned, constraints="six==1.16.0\n")
    assert (plain / PIP_DIR).is_dir() and not any((plain / PIP_DIR).iterdir())
    assert (pinned / PIP_DIR / "constraints.txt").read_text() == "six==1.16.0\n"
    assert hash_tree(plain) != hash_tree(pinned)


def test_cli_names_a_bad_constraints_file(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text('apiVersion: imgbuild/v1\nkind: Recipe\nmetadata: {name: r}\n'
                      'base: {tag: "localhost/r:1", from: "scratch"}\n')
    bad = tmp_path / "bad.txt"
    bad.write_text("six>1\n")
    host = os.environ.get(ENGINE_HOST_VARS["podman"])
    if not host:
        pytest.skip("the build command connects to an engine before reading the constraints")
    done = CliRunner().invoke(cli, ["build", str(recipe), "--constraints", str(bad), "--engine", "podman",
                                    "--host", host])
    assert done.exit_code == 1
    assert f"constraints {bad}: line 1 is not a name==version pin" in done.output.replace("\n", "")


# --- engine: record, then rebuild with the recorded versions ----------------------------------------------


def six_recipe(folder: Path, tag: str, base_from: str, requirement: str) -> Path:
    path = folder / f"six-{requirement.replace('=', '')}.yaml"
    path.write_text(f'apiVersion: imgbuild/v1\nkind: Recipe\nmetadata: {{name: six}}\n'
                    f'base: {{tag: "{tag}", from: "{base_from}", pip: ["{requirement}"]}}\n')
    return path


def installed(engine, image: str) -> dict[str, str]:
    record = load_constraints(image, engine).text
    return dict(line.split("==", 1) for line in record.splitlines() if "==" in line)


@pytest.mark.slow
@pytest.mark.engine
def test_rebuild_with_constraints_from_image_installs_the_recorded_versions(
        podman_cleanup, unique_tag, tmp_path: Path) -> None:
    """On Podman only: the constraints change the build context, not anything engine-specific."""
    engine, cleanup = podman_cleanup
    bookworm_image = cleanup.image(unique_tag("six-base"))
    bootstrap_image(engine, Bootstrap(suite="bookworm", include=["python3"]),
                    BootstrapOptions(mirror=hostconfig.apt_archive_url(), tag=bookworm_image))
    first = cleanup.image(unique_tag("six-old"))
    again = cleanup.image(unique_tag("six-again"))

    def build(recipe: Path, *extra: str) -> dict:
        done = CliRunner().invoke(cli, ["build", str(recipe), "--engine", "podman", "--host", engine.host,
                                        "--json", *extra])
        assert done.exit_code == 0, done.output[-3000:]
        return json.loads(done.stdout)

    build(six_recipe(tmp_path, first, bookworm_image, "six==1.16.0"))
    recorded = installed(engine, first)
    assert recorded["six"] == "1.16.0" and "pip" in recorded

    # Unpinned, pip would take the newest six (1.17.0 or later); the recorded versions win.
    build(six_recipe(tmp_path, again, bookworm_image, "six"), "--constraints", first)
    assert installed(engine, again)["six"] == "1.16.0"

    # The record is a plain pip freeze file: the same works from a file.
    freeze = tmp_path / "freeze.txt"
    freeze.write_text(load_constraints(first, engine).text)
    assert load_constraints(str(freeze), None).text == freeze.read_text()
    assert RECORD_PATH == "/opt/imgbuild/pip-installed.txt"
