"""The files imgbuild ships (imgbuild/data, found through importlib.resources) and `imgbuild example`, which writes
a shipped recipe with the files it names into a folder where `plan` and `build` take it (unit tier; the
installed wheel is tests/test_wheel.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgbuild.build.context import containerfile_for
from imgbuild.build.plan import PlanOptions, plan_recipe
from imgbuild.cli import app
from imgbuild.foundation import shipped
from imgbuild.foundation.errors import ExampleError, Remedy, UsageError
from imgbuild.recipe.examples import list_examples, write_example
from imgbuild.recipe.loader import load_recipe

REPO = Path(__file__).resolve().parent.parent


def test_the_data_folders_are_the_checkouts_top_level_folders() -> None:
    for name in (shipped.CONTAINERFILES_DIR, shipped.RUNTIME_DIR, shipped.RECIPES_DIR):
        assert (shipped.data_root() / name).resolve() == (REPO / name).resolve()


def test_a_recipe_without_containerfile_gets_the_shipped_defaults(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text((REPO / "tests" / "recipes" / "http-app.yaml").read_text()
                      .replace("src: http-app/", f"src: {REPO}/tests/recipes/http-app/"))
    loaded = load_recipe(recipe, env={})
    assert containerfile_for(loaded, "base") == shipped.data_root() / "Containerfiles" / "python-base.Containerfile"
    assert containerfile_for(loaded, "app") == shipped.data_root() / "Containerfiles" / "app.Containerfile"
    assert containerfile_for(loaded, "base").read_bytes() == (REPO / "Containerfiles/python-base.Containerfile").read_bytes()


def test_every_shipped_recipe_is_an_example_and_names_only_shipped_files() -> None:
    listed = {e.name: e for e in list_examples().examples}
    assert set(listed) == {p.stem for p in (REPO / "recipes").glob("*.yaml")}
    demo = listed["demo"]
    assert demo.items == ("recipes/demo.yaml", "Containerfiles/tts-app.Containerfile", "runtime")
    assert "runtime/pyproject.toml" in demo.files and "runtime/imgbuild_runtime/__main__.py" in demo.files
    assert not [f for f in demo.files if "__pycache__" in f or ".egg-info" in f or f.endswith(".pyc")]
    # Paths the user gives through variables (the fish-speech source zip) are not the example's.
    assert listed["fish-speech-lora"].items == ("recipes/fish-speech-lora.yaml",
                                                "Containerfiles/fish-speech-lora.Containerfile",
                                                "Containerfiles/torchaudio_io.py")


def test_the_written_demo_loads_and_plans_with_its_relative_paths(tmp_path: Path) -> None:
    result = write_example("demo", tmp_path / "ex")
    assert Path(result.recipe) == tmp_path / "ex" / "recipes" / "demo.yaml"
    assert result.written[0] == "recipes/demo.yaml" and result.unchanged == ()
    for rel in result.written:
        assert (tmp_path / "ex" / rel).read_bytes() == (REPO / rel).read_bytes()
    loaded = load_recipe(result.recipe, env={})
    assert containerfile_for(loaded, "app") == (tmp_path / "ex" / "Containerfiles" / "tts-app.Containerfile").resolve()
    plan = plan_recipe(result.recipe, PlanOptions(env={}, host_defaults=False))
    assert any(f.path == str((tmp_path / "ex" / "runtime").resolve()) for f in plan.files)


def test_writing_again_keeps_equal_files_and_refuses_to_overwrite_others(tmp_path: Path) -> None:
    folder = tmp_path / "ex"
    first = write_example("demo", folder)
    assert write_example("demo", folder).unchanged == first.written
    (folder / "runtime" / "README.md").write_text("mine\n")
    (folder / "recipes" / "demo.yaml").unlink()
    with pytest.raises(ExampleError, match="README.md exists") as caught:
        write_example("demo", folder)
    assert caught.value.path == str(folder / "runtime" / "README.md") and caught.value.remedy == Remedy.OVERWRITE
    assert not (folder / "recipes" / "demo.yaml").exists()  # a refused run writes nothing
    forced = write_example("demo", folder, overwrite=True)
    assert forced.written == ("recipes/demo.yaml", "runtime/README.md")
    assert (folder / "runtime" / "README.md").read_bytes() == (REPO / "runtime" / "README.md").read_bytes()


def test_an_unknown_example_names_the_ones_there_are(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no example named 'nope'") as caught:
        write_example("nope", tmp_path)
    assert "demo" in (caught.value.hint or "")


def test_the_command_writes_into_dot_name_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["example", "demo"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "demo" / "recipes" / "demo.yaml").is_file()
    assert "imgbuild plan demo/recipes/demo.yaml" in result.stdout
    listed = CliRunner().invoke(app, ["example"])
    assert listed.exit_code == 0 and "fish-speech-lora" in listed.stdout
    (tmp_path / "demo" / "runtime" / "README.md").write_text("mine\n")
    refused = CliRunner().invoke(app, ["example", "demo"])
    assert refused.exit_code == 1 and "--force overwrites them" in refused.stderr
    assert CliRunner().invoke(app, ["example", "demo", "--force"]).exit_code == 0
