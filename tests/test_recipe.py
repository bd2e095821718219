"""Recipe model and loader: valid recipes, interpolation, and errors that name file:line:column and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from imgbuild.foundation.errors import RecipeError
from imgbuild.recipe.loader import allowed_keys, format_key, load_recipe
from imgbuild.recipe.model import HubCheckpoint, LocalCheckpoint
from tests.support.hostile_recipes import HEADER

REPO = Path(__file__).resolve().parent.parent

MINIMAL = HEADER


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path, env: dict[str, str] | None = None) -> RecipeError:
    with pytest.raises(RecipeError) as err:
        load_recipe(path, env=env or {})
    return err.value


def test_demo_recipe_loads() -> None:
    loaded = load_recipe(REPO / "recipes" / "demo.yaml", env={})
    r = loaded.recipe
    assert r.metadata.name == "demo"
    assert r.base.bootstrap is not None and r.base.bootstrap.suite == "bookworm"
    assert r.app is not None and r.app.from_ == "base" and r.app.serve.health.path == "/health"
    assert loaded.folder == (REPO / "recipes").resolve()
    assert loaded.resolve("../runtime/pyproject.toml").is_file()
    voice = r.app.checkpoints[0]
    assert (voice.repo, voice.dest) == ("rhasspy/piper-voices", "voice") and voice.include


def test_minimal_recipe_gets_defaults(tmp_path: Path) -> None:
    r = load_recipe(write(tmp_path, MINIMAL), env={}).recipe
    assert r.app is None
    assert r.base.bootstrap.variant == "minbase" and r.base.bootstrap.include == ["python3"]
    assert r.mirrors.ca_certificates == []


def test_misspelled_key_names_line_column_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("    suite:", "    suiet:"))
    err = error_of(path)
    assert (err.line, err.column, err.key) == (8, 5, "base.bootstrap.suiet")
    assert str(err).startswith(f"{path}:8:5: base.bootstrap.suiet: unknown key `suiet`")
    assert err.hint == "did you mean `suite`?"


def test_unknown_key_without_close_match_lists_allowed_keys(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, MINIMAL + "colour: blue\n"))
    assert err.key == "colour" and err.line == 9
    assert "allowed keys here:" in (err.hint or "") and "mirrors" in (err.hint or "")


def test_wrong_type_points_at_value(tmp_path: Path) -> None:
    text = MINIMAL + "app:\n  tag: localhost/t-app:1\n  serve:\n    port: eighty\n"
    err = error_of(write(tmp_path, text))
    assert (err.line, err.column, err.key) == (12, 11, "app.serve.port")
    assert "valid integer" in err.reason and "'eighty'" in err.reason


def test_missing_key_points_at_its_mapping(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, MINIMAL.replace("  tag: localhost/t-base:1\n", "")))
    assert err.key == "base.tag" and err.line == 6
    assert "missing required key `tag`" in err.reason


def test_from_and_bootstrap_are_exclusive(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, MINIMAL.replace("  bootstrap:\n", "  from: debian:bookworm\n  bootstrap:\n")))
    assert err.key == "base" and "exactly one of `from` and `bootstrap`" in err.reason


def test_checkpoint_union_gives_one_error_for_the_chosen_kind(tmp_path: Path) -> None:
    text = MINIMAL + textwrap.dedent("""\
        app:
          tag: localhost/t-app:1
          checkpoints:
            - repo: org/model
              dest: checkpoints/m
              revison: main
        """)
    err = error_of(write(tmp_path, text))
    assert err.key == "app.checkpoints[0].revison" and err.hint == "did you mean `revision`?"
    assert "more problem" not in (err.hint or "")


def test_checkpoints_parse_to_hub_and_local(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    text = MINIMAL + "app:\n  tag: localhost/t-app:1\n  checkpoints:\n" \
        "    - {repo: org/m, dest: a}\n    - {path: ckpt, dest: b}\n"
    cps = load_recipe(write(tmp_path, text), env={}).recipe.app.checkpoints
    assert isinstance(cps[0], HubCheckpoint) and isinstance(cps[1], LocalCheckpoint)


def test_interpolation_with_defaults_and_escapes(tmp_path: Path) -> None:
    text = MINIMAL + textwrap.dedent("""\
        mirrors:
          apt: ${APT:-http://127.0.0.1:9/debian}
          pip:
            index_url: ${PIP_URL}
            extra_index_urls: ["$${NOT_A_VAR}", "$HOME/x"]
        """)
    r = load_recipe(write(tmp_path, text), env={"PIP_URL": "http://127.0.0.1:8/simple"}).recipe
    assert r.mirrors.apt == "http://127.0.0.1:9/debian"
    assert r.mirrors.pip.index_url == "http://127.0.0.1:8/simple"
    assert r.mirrors.pip.extra_index_urls == ["${NOT_A_VAR}", "$HOME/x"]
    r2 = load_recipe(tmp_path / "r.yaml", env={"PIP_URL": "u", "APT": "http://127.0.0.1:7/d"}).recipe
    assert r2.mirrors.apt == "http://127.0.0.1:7/d"


def test_interpolated_numbers_are_coerced(tmp_path: Path) -> None:
    text = MINIMAL + "app:\n  tag: localhost/t-app:1\n  serve:\n    port: ${PORT:-9090}\n"
    assert load_recipe(write(tmp_path, text), env={}).recipe.app.serve.port == 9090


def test_unset_variable_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "mirrors:\n  apt: ${NO_SUCH_VAR}\n")
    err = error_of(path)
    assert (err.line, err.key) == (10, "mirrors.apt")
    assert "NO_SUCH_VAR is not set" in err.reason and "${NO_SUCH_VAR:-default}" in (err.hint or "")


@pytest.mark.parametrize("expr", ["${1BAD}", "${A:?x}", "${unclosed", "${}"])
def test_malformed_interpolation(tmp_path: Path, expr: str) -> None:
    err = error_of(write(tmp_path, MINIMAL + f"mirrors:\n  apt: \"{expr}\"\n"))
    assert err.line == 10 and err.key == "mirrors.apt"
    assert "malformed" in err.reason or "unclosed" in err.reason


def test_missing_files_are_reported_where_named(tmp_path: Path) -> None:
    text = MINIMAL + "mirrors:\n  ca_certificates: [proxy.crt]\n"
    err = error_of(write(tmp_path, text))
    assert (err.line, err.key) == (10, "mirrors.ca_certificates[0]") and "file not found: proxy.crt" in err.reason
    text = MINIMAL + "app:\n  tag: localhost/t-app:1\n  context:\n    - src: missing.zip\n      dest: src\n"
    err = error_of(write(tmp_path, text))
    assert (err.line, err.key) == (12, "app.context[0].src")
    err = error_of(write(tmp_path, MINIMAL + "  containerfile: nope.Containerfile\n"))
    assert err.key == "base.containerfile" and err.line == 9


def test_yaml_syntax_error_has_position(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, MINIMAL + "app: [unclosed\n"))
    assert err.line is not None and "YAML syntax" in err.reason


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, MINIMAL + "metadata:\n  name: again\n"))
    assert err.key == "metadata" and err.line == 9 and "duplicate" in err.reason


def test_not_a_mapping_and_unreadable(tmp_path: Path) -> None:
    assert "YAML mapping" in error_of(write(tmp_path, "- a\n- b\n")).reason
    assert "cannot read" in error_of(tmp_path / "absent.yaml").reason


def test_wrong_api_version(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, MINIMAL.replace("imgbuild/v1", "imgbuild/v9")))
    assert err.key == "apiVersion" and err.line == 1 and "imgbuild/v1" in err.reason


def test_allowed_keys_follow_the_model() -> None:
    assert "bootstrap" in allowed_keys(("base",)) and "from" in allowed_keys(("base",))
    assert "revision" in allowed_keys(("app", "checkpoints", 0, "hub"))
    assert "revision" not in allowed_keys(("app", "checkpoints", 0, "local"))
    assert format_key(("app", "context", 2, "src")) == "app.context[2].src"


def test_readme_full_example_is_a_valid_recipe() -> None:
    """The README's full example must stay valid (its files do not exist here, so only the model is checked)."""
    import re

    import yaml

    from imgbuild.recipe.model import Recipe

    readme = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "apiVersion" in b)
    recipe = Recipe.model_validate(yaml.safe_load(block))
    assert recipe.app is not None and len(recipe.app.checkpoints) == 2
    assert isinstance(recipe.app.checkpoints[1], LocalCheckpoint)
