"""Hostile and unlucky recipes are refused quickly, within a memory bound, with file:line and a reason.

Each case once crashed, hung or passed `check`/`plan` while `build` refused it. Property tests: no text,
and no YAML structure, makes the loader raise anything but RecipeError or exceed its time and memory bounds.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgbuild.foundation.errors import RecipeError
from imgbuild.recipe.loader import load_recipe
from tests.support import hostile_recipes as hostile

REPO = Path(__file__).resolve().parent.parent
PEAK_LIMIT = 100 * 1024 * 1024

# case -> (line of the refusal or None for the whole file, words the reason holds)
EXPECTED: dict[str, tuple[int | None, str]] = {
    "alias-bomb": (10, "once aliases are expanded"),
    "self-alias": (9, "alias refers to a collection that contains it"),
    "deep-nesting": (9, "nesting depth"),
    "huge-number": (9, "a number of 100001 digits (at most 4300)"),
    "huge-port": (12, "cannot read value 99999"),
    "oversized": (None, "recipe too large"),
    "fifo": (None, "not a regular file (a FIFO)"),
    "device": (None, "not a regular file (a character device)"),
    "dest-escape": (13, "dest must be a relative path inside the app folder"),
    "long-tag": (6, "at most 400 characters"),
    "containerfile-device": (9, "/dev/zero is not a regular file"),
}


def refusal(path: Path) -> tuple[RecipeError, int]:
    """The RecipeError loading `path` raises, and the peak memory Python allocated meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(RecipeError) as err:
            load_recipe(path, env={})
        return err.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.timeout(60)  # a FIFO read without the fix waits for a writer forever
@pytest.mark.parametrize("case", sorted(set(EXPECTED) - {"alias-bomb"}))  # the bomb: under a memory limit below
def test_hostile_recipe_is_refused_with_file_line_and_reason(tmp_path: Path, case: str) -> None:
    path = hostile.CASES[case](tmp_path)
    err, peak = refusal(path)
    line, words = EXPECTED[case]
    assert err.file == str(path) and err.line == line, str(err)
    assert words in err.reason, str(err)
    assert peak < PEAK_LIMIT


def _limited() -> None:
    # Without the bounds the bomb grows to gigabytes; here it fails with MemoryError instead.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("command", ["check", "plan"])
def test_alias_bomb_check_and_plan(tmp_path: Path, command: str) -> None:
    path = hostile.alias_bomb(tmp_path)
    assert path.stat().st_size < 600
    # The peak is taken by a small parent of the CLI's own: RUSAGE_CHILDREN of this test process would also
    # count every earlier child of the whole test session.
    peak_of_child = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
                     "print('peak-kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
                     "sys.exit(done.returncode)")
    proc = subprocess.Popen([sys.executable, "-c", peak_of_child, sys.executable, "-m", "imgbuild", command,
                             str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_limited,
                            cwd=tmp_path, env={**os.environ, "COLUMNS": "300"})
    out, err = proc.communicate(timeout=120)
    text = err.decode()
    assert proc.returncode == 1, text
    assert f"{path}:10:" in text and "once aliases are expanded" in text
    peak_kib = int(text.rsplit("peak-kib ", 1)[1].split()[0])
    assert peak_kib * 1024 < 400 * 1024 * 1024  # interpreter and imports included


def test_alias_bomb_in_process_bounded(tmp_path: Path) -> None:
    """With the bounds in place the bomb can be loaded in-process: small peak, stops at the limit."""
    err, peak = refusal(hostile.alias_bomb(tmp_path))
    assert err.line == 10 and "more than 10000 values" in err.reason
    assert peak < PEAK_LIMIT


def test_aliases_within_the_bounds_still_work(tmp_path: Path) -> None:
    text = hostile.HEADER.replace("    suite: bookworm", "    suite: &s bookworm\n    include: [python3, *s]")
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert load_recipe(path, env={}).recipe.base.bootstrap.include == ["python3", "bookworm"]


def test_collection_as_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(hostile.HEADER + "x-a: &a [1, 2]\n? *a\n: value\n")
    err, _ = refusal(path)
    assert err.line == 9 and "a key must be a plain value" in err.reason  # where the aliased list is


def test_run_reads_recipe_text_from_a_set_with_the_same_bounds(tmp_path: Path) -> None:
    from imgbuild.recipe.loader import parse_recipe_text

    text = hostile.alias_bomb(tmp_path).read_text()
    with pytest.raises(RecipeError, match="set manifest: recipe:10:.*once aliases are expanded"):
        parse_recipe_text(text, "set manifest: recipe")
    recipe, _ = parse_recipe_text(hostile.HEADER + "app:\n  tag: t/a:1\n  serve: {env: {A: '${P}'}}\n", "m")
    assert recipe.app is not None and recipe.app.serve.env == {"A": "${P}"}


def test_long_tag_name_and_tag_limits(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(hostile.HEADER.replace("t-base:1", "t-base:" + "a" * 129))
    assert "image tag longer than 128 characters" in refusal(path)[0].reason
    path.write_text(hostile.HEADER.replace("localhost/t-base:1", "a" * 256))
    assert "image name longer than 255 characters" in refusal(path)[0].reason
    path.write_text(hostile.HEADER.replace("t-base:1", "t-base:" + "a" * 128))
    assert load_recipe(path, env={}).recipe.base.tag.endswith("a" * 128)


# -- properties -------------------------------------------------------------------------------------

PROPERTY = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])

yaml_text = st.text(alphabet=st.sampled_from(list("ab:-[]{},&*!|>'\"#%@`? \n\t\\$9.") + ["\x00", "\u00e9"]),
                    max_size=400)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
trees = st.recursive(scalars, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids,
                                                                                      max_size=5), max_leaves=40)


def _loads_or_refuses(path: Path) -> None:
    tracemalloc.start()
    try:
        try:
            load_recipe(path, env={})
        except RecipeError as err:
            assert err.file == str(path) and err.reason
        assert tracemalloc.get_traced_memory()[1] < PEAK_LIMIT
    finally:
        tracemalloc.stop()


@PROPERTY
@given(text=yaml_text)
def test_property_any_text_loads_or_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _loads_or_refuses(path)


@PROPERTY
@given(text=yaml_text, at=st.integers(min_value=0, max_value=len(hostile.HEADER)))
def test_property_damaged_recipe_loads_or_is_refused(tmp_path: Path, text: str, at: int) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(hostile.HEADER[:at] + text + hostile.HEADER[at:])
    _loads_or_refuses(path)


@PROPERTY
@given(tree=trees, where=st.sampled_from(["", "base", "metadata", "app"]))
def test_property_any_structure_loads_or_is_refused(tmp_path: Path, tree: object, where: str) -> None:
    data = yaml.safe_load(hostile.HEADER)
    if where:
        data[where] = tree
    else:
        data = tree
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    _loads_or_refuses(path)


@pytest.mark.parametrize("case", ["dest-escape", "long-tag", "containerfile-device", "self-alias", "huge-number"])
@pytest.mark.parametrize("command", ["check", "plan"])
def test_check_and_plan_refuse_what_build_refuses(tmp_path: Path, case: str, command: str) -> None:
    from typer.testing import CliRunner

    from imgbuild.cli import app

    path = hostile.CASES[case](tmp_path)
    result = CliRunner().invoke(app, [command, str(path)], env={"COLUMNS": "400"})
    line, words = EXPECTED[case]
    assert result.exit_code == 1, result.output
    text = result.output.replace("\n", " ")
    assert f"{path}:{line}:" in text and words in text
