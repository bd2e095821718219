"""`imgbuild plan`: the dry run of a recipe, on recipes and files made here (no network, no engine)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgbuild.build.plan import FROM_HOST, FROM_RECIPE, UNSET, PlanOptions, plan_recipe
from imgbuild.checkpoints.lockfile import Lock, LockedCheckpoint, LockedFile, entry_key, lock_path_for, write_lock
from imgbuild.cli import app
from imgbuild.foundation.errors import RecipeError
from imgbuild.recipe.loader import load_recipe

ENV = {"HF_ENDPOINT": ""}


def make_inputs(folder: Path) -> None:
    """A source zip, a voices folder, a local checkpoint and a wheel folder, with known sizes."""
    with zipfile.ZipFile(folder / "src.zip", "w") as zf:
        zf.writestr("proj-main/pyproject.toml", "x" * 100)
        zf.writestr("proj-main/tools/gen_ref.py", "y" * 50)
    voices = folder / "ref_data" / "spk" / "e1"
    voices.mkdir(parents=True)
    (voices / "a.wav").write_bytes(b"\0" * 3000)
    (voices / "a.lab").write_text("hello")
    ckpt = folder / "lora"
    ckpt.mkdir()
    (ckpt / "model.pth").write_bytes(b"\1" * 4096)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "notes.md").write_text("not wanted")
    (folder / "wheels").mkdir()
    (folder / "wheels" / "w-1-py3-none-any.whl").write_bytes(b"w" * 700)


RECIPE = """\
apiVersion: imgbuild/v1
kind: Recipe
metadata: {name: plantest}
mirrors:
  apt: ${APT:-}
  pip:
    index_url: http://127.0.0.1:9/simple
    find_links: [wheels, "http://127.0.0.1:7/links"]
base:
  tag: localhost/plantest-base:1
  bootstrap: {suite: bookworm, include: [python3]}
  packages: [libsox-dev]
  pip: [torch==2.13.0+cpu]
app:
  tag: localhost/plantest-app:1
  context:
    - {src: src.zip, dest: ., extract: true, strip_components: 1}
    - {src: ref_data, dest: ref_data}
  checkpoints:
    - {path: lora, include: ["*.pth", "*.json"], dest: checkpoints/lora}
    - {repo: org/model, include: [model.pth], dest: ./checkpoints/model/}  # stored as checkpoints/model
  serve:
    command: [python3, -m, tools.api, --listen, "0.0.0.0:8080"]
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    make_inputs(tmp_path)
    path = tmp_path / "plantest.yaml"
    path.write_text(RECIPE)
    return path


def test_plan_lists_files_sizes_args_and_tags(recipe: Path) -> None:
    plan = plan_recipe(recipe, PlanOptions(env={**ENV, "APT": "http://127.0.0.1:9/debian"}))
    assert [(i.role, i.tag) for i in plan.images] == [("base", "localhost/plantest-base:1"),
                                                      ("app", "localhost/plantest-app:1")]
    base, app_image = plan.images
    assert base.start.startswith("bootstrap bookworm") and base.start.endswith("http://127.0.0.1:9/debian")
    assert base.args["BASE_IMAGE"] == "localhost/plantest-base-rootfs:latest"
    assert base.args["APT_PACKAGES"] == "libsox-dev" and base.args["PIP_PACKAGES"] == "torch==2.13.0+cpu"
    # Local find-links folders are copied into the context and seen by pip at /opt/imgbuild/wheels.
    assert base.args["PIP_FIND_LINKS"] == "http://127.0.0.1:7/links /opt/imgbuild/wheels"
    assert app_image.args["BASE_IMAGE"] == "localhost/plantest-base:1"
    assert app_image.args["SERVE_COMMAND"] == "python3 -m tools.api --listen 0.0.0.0:8080"

    by_key = {f.key: f for f in plan.files}
    zipped = by_key["app.context[0].src"]
    assert (zipped.bytes, zipped.files, zipped.extract) == (150, 2, True)  # unpacked sizes
    voices = by_key["app.context[1].src"]
    assert (voices.bytes, voices.files, voices.dest) == (3005, 2, "app/ref_data")
    assert (by_key["mirrors.pip.find_links[0]"].bytes, by_key["mirrors.pip.find_links[0]"].files) == (700, 1)
    assert {f.key for f in plan.files if f.role == "containerfile"} == {"base.containerfile", "app.containerfile"}
    assert all(Path(f.path).exists() for f in plan.files)


def test_plan_checkpoint_sizes_come_from_the_folder_and_the_lock(recipe: Path) -> None:
    plan = plan_recipe(recipe, PlanOptions(env=ENV))
    local, hub = plan.checkpoints
    # The include patterns select what `download` would stage: notes.md is left out.
    assert dict(local.files) == {"config.json": 2, "model.pth": 4096} and local.bytes == 4098
    assert hub.name == "org/model@main" and not hub.locked and hub.bytes is None
    assert plan.checkpoint_bytes is None and not plan.lock_present
    assert any("imgbuild download" in n for n in plan.notes)

    entry = load_recipe(recipe, ENV).recipe.app.checkpoints[1]
    lock = Lock((LockedCheckpoint(entry_key(entry), "checkpoints/model",
                                  (LockedFile("model.pth", 980602750, "ab" * 32),), "hub", "c0ffee" * 6 + "abcd",
                                  "http://127.0.0.1:5"),))
    write_lock(lock_path_for(recipe), lock)
    plan = plan_recipe(recipe, PlanOptions(env=ENV))
    hub = plan.checkpoints[1]
    assert hub.locked and hub.bytes == 980602750 and hub.commit.startswith("c0ffee")
    assert hub.endpoint == "http://127.0.0.1:5"
    assert plan.lock_present and plan.checkpoint_bytes == 4098 + 980602750


def test_mirror_sources_recipe_host_and_unset(recipe: Path) -> None:
    given = plan_recipe(recipe, PlanOptions(env={**ENV, "APT": "http://127.0.0.1:9/debian"}))
    apt = next(m for m in given.mirrors if m.name == "apt")
    assert (apt.value, apt.source) == ("http://127.0.0.1:9/debian", FROM_RECIPE)
    index = next(m for m in given.mirrors if m.name == "pip.index_url")
    assert (index.value, index.source) == ("http://127.0.0.1:9/simple", FROM_RECIPE)

    # ${APT:-} left empty: the build falls back to this host's apt sources, and the plan says so.
    fallback = plan_recipe(recipe, PlanOptions(env=ENV))
    apt = next(m for m in fallback.mirrors if m.name == "apt")
    assert apt.source in (FROM_HOST, UNSET) and (apt.value is None) == (apt.source == UNSET)

    alone = plan_recipe(recipe, PlanOptions(env=ENV, host_defaults=False))
    apt = next(m for m in alone.mirrors if m.name == "apt")
    assert (apt.value, apt.source) == (None, UNSET)
    assert any("no apt mirror" in n for n in alone.notes)
    assert next(m for m in alone.mirrors if m.name == "ca_certificates").value == []


def test_plan_is_as_strict_as_check(recipe: Path, tmp_path: Path) -> None:
    recipe.write_text(RECIPE.replace("src: ref_data", "src: missing_voices"))
    with pytest.raises(RecipeError) as err:
        plan_recipe(recipe, PlanOptions(env=ENV))
    assert "file not found: missing_voices" in str(err.value) and err.value.line == 18


def test_cli_plan_json_and_text(recipe: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["plan", str(recipe), "--json"], env={"APT": "http://127.0.0.1:9/debian"})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["name"] == "plantest" and data["lock_present"] is False
    assert [i["tag"] for i in data["images"]] == ["localhost/plantest-base:1", "localhost/plantest-app:1"]
    assert data["context_bytes"] == sum(f["bytes"] for f in data["files"])
    assert {"name": "apt", "value": "http://127.0.0.1:9/debian", "source": "recipe"} in data["mirrors"]

    text = runner.invoke(app, ["plan", str(recipe)], env={"APT": "http://127.0.0.1:9/debian", "COLUMNS": "200"})
    assert text.exit_code == 0, text.output
    for expected in ("localhost/plantest-app:1", "http://127.0.0.1:9/debian", "org/model@main", "not locked",
                     "PIP_PACKAGES=torch==2.13.0+cpu"):
        assert expected in text.stdout

    missing = runner.invoke(app, ["plan", str(recipe.with_name("nope.yaml"))])
    assert missing.exit_code == 1 and "cannot read recipe" in missing.output
