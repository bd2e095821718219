"""The command line through typer's CliRunner: help, schema, check, build, exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgbuild.cli import COMMAND_MODULES, COMMANDS, app
from imgbuild.cli.common import cli_command
from imgbuild.foundation.errors import ImgbuildError, UsageError

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_help_lists_only_registered_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("schema", "check", "build"):
        assert command in result.stdout
    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert {"schema", "check", "build"} <= registered
    assert "cmd_recipe" in COMMAND_MODULES


def test_each_command_is_mapped_to_the_module_that_registers_it() -> None:
    registered = {c.name or c.callback.__name__: c.callback.__module__.rsplit(".", 1)[1]
                  for c in app.registered_commands}
    assert registered == COMMANDS


@pytest.mark.parametrize("argv", [["load", "--help"], ["--version"], ["--help"]])
def test_a_run_imports_only_its_commands_module(argv: list[str]) -> None:
    code = ("import json, sys\nfrom imgbuild.cli import main\nsys.argv = ['imgbuild', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('imgbuild.cli.cmd_'))), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    imported = json.loads(result.stderr.strip().splitlines()[-1])
    expected = ["cmd_restore"] if argv[0] == "load" else sorted(COMMAND_MODULES)
    assert imported == [f"imgbuild.cli.{name}" for name in expected]
    assert ("Usage: imgbuild load" in result.stdout) == (argv[0] == "load")


def test_schema_is_json_schema_of_the_recipe() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert set(schema["required"]) >= {"apiVersion", "kind", "metadata", "base"}
    assert "bootstrap" in schema["$defs"]["BaseLayer"]["properties"]


def test_check_ok_text_and_json() -> None:
    demo = str(REPO / "recipes" / "demo.yaml")
    result = runner.invoke(app, ["check", demo])
    assert result.exit_code == 0 and "ok" in result.stdout
    result = runner.invoke(app, ["check", demo, "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["recipe"] == "demo" and len(data["images"]) == 2


def test_check_misspelled_key_prints_position_and_suggestion(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (REPO / "tests" / "recipes" / "http-app.yaml").read_text().replace("  bootstrap:", "  bootstrp:")
    bad.write_text(text.replace("src: http-app/", f"src: {REPO}/tests/recipes/http-app/"))
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "bootstrp" in ln)
    result = runner.invoke(app, ["check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:{line}:3: base.bootstrp: unknown key `bootstrp`" in result.stderr
    assert "did you mean `bootstrap`?" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_usage_errors_exit_2() -> None:
    assert runner.invoke(app, ["check"]).exit_code == 2
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2
    assert runner.invoke(app, ["build", "x.yaml", "--engine", "containerd"]).exit_code in (1, 2)


def test_error_mapping_and_traceback_switch(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import typer

    @cli_command
    def fails(exc: Exception) -> None:
        raise exc

    for exc, code in ((ImgbuildError("boom", hint="try this"), 1), (UsageError("bad flag"), 2),
                      (RuntimeError("bug"), 1)):
        with pytest.raises(typer.Exit) as ended:
            fails(exc)
        assert ended.value.exit_code == code
    err = capsys.readouterr().err
    assert "error: boom" in err and "hint: try this" in err and "unexpected error: RuntimeError: bug" in err
    assert "Traceback" not in err
    monkeypatch.setenv("IMGBUILD_TRACEBACK", "1")
    with pytest.raises(typer.Exit):
        fails(ImgbuildError("boom"))
    assert "Traceback" in capsys.readouterr().err


def test_build_unknown_engine_is_usage_error() -> None:
    result = runner.invoke(app, ["build", str(REPO / "recipes" / "demo.yaml"), "--engine", "containerd"])
    assert result.exit_code == 2 and "--engine must be one of" in result.stderr


SMALL_BASE = "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo small > /small.txt\n"


def small_recipe(tmp_path: Path, unique_tag, bookworm_image: str, containerfile: str) -> Path:
    (tmp_path / "base.Containerfile").write_text(containerfile)
    (tmp_path / "hello.txt").write_text("hello")
    path = tmp_path / "small.yaml"
    path.write_text(f"""\
apiVersion: imgbuild/v1
kind: Recipe
metadata: {{name: small}}
base: {{tag: "{unique_tag('cli-base')}", from: "{bookworm_image}", containerfile: base.Containerfile}}
app:
  tag: "{unique_tag('cli-app')}"
  context: [{{src: hello.txt, dest: hello.txt}}]
""")
    return path


def test_build_json_prints_tags_and_ids(engine, cleanup, unique_tag, bookworm_image, tmp_path: Path) -> None:
    recipe = small_recipe(tmp_path, unique_tag, bookworm_image, SMALL_BASE)
    cleanup.image(unique_tag("cli-app"))
    cleanup.image(unique_tag("cli-base"))
    args = ["build", str(recipe), "--json", "--engine", engine.kind, "--host", engine.host]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    images = {i["role"]: i for i in data["images"]}
    assert images["base"]["tag"] == unique_tag("cli-base") and images["app"]["tag"] == unique_tag("cli-app")
    for image in images.values():
        assert image["id"] == engine.api.inspect_image(image["tag"])["Id"]
    again = json.loads(runner.invoke(app, args).stdout)
    assert [i["cached"] for i in again["images"]] == [True, True]


def test_build_failure_exit_1_shows_step(engine, cleanup, unique_tag, bookworm_image, tmp_path: Path) -> None:
    recipe = small_recipe(tmp_path, unique_tag, bookworm_image, SMALL_BASE + "RUN echo cli-marker && false\n")
    cleanup.image(unique_tag("cli-base"))
    result = runner.invoke(app, ["build", str(recipe), "--engine", engine.kind, "--host", engine.host])
    assert result.exit_code == 1
    assert "build failed at step" in result.stderr and "cli-marker" in result.stderr
    assert "Traceback" not in result.output
