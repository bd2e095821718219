"""The CLI contract: every command that takes --json prints exactly one JSON document on stdout, whether
it succeeds or fails (a failure's document is {"ok": false, "error": {...}} with the error's context
fields; arguments the parser refuses give {"ok": false, "error": {"type": "UsageError", ...}} and exit
code 2); messages and progress go to stderr. Unit tier: engines are named by a socket that does not exist,
so the commands that need one fail cleanly."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgbuild.cli import app
from imgbuild.parity.volumes import ParityOptions, add_parity_volumes
from imgbuild.setformat import layout
from tests.support import synthetic_set
from tests.support.restore_sets import flip

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "recipes" / "demo.yaml")
NO_ENGINE = ["--engine", "podman", "--host", "unix:///nonexistent/imgbuild-test.sock"]

# command -> [(arguments, expected exit code, expected "ok" or error type)]; {set}, {tmp} are filled in.
CASES: dict[str, list[tuple[list[str], int, str | bool | None]]] = {
    "check": [([DEMO], 0, True), (["{tmp}/none.yaml"], 1, "RecipeError")],
    "plan": [([DEMO], 0, None), (["{tmp}/none.yaml"], 1, "RecipeError")],
    "build": [(["{tmp}/none.yaml", *NO_ENGINE], 1, "RecipeError")],
    "download": [(["{tmp}/none.yaml"], 1, "RecipeError")],
    "archive": [(["localhost/none:1", "--out", "{tmp}/out", *NO_ENGINE], 1, "EngineError")],
    "verify": [(["{set}"], 0, True), (["{damaged}"], 1, False)],
    "load": [(["{set}", *NO_ENGINE], 1, "EngineError")],
    "load-and-run": [(["{set}", *NO_ENGINE], 1, "EngineError")],
    "repair": [(["{set}", "--out", "{tmp}/repaired"], 0, None), (["{tmp}/none", "--out", "{tmp}/r"], 1, "ArchiveError")],
    "inspect": [(["{set}"], 0, None)],
    "catalog": [(["--catalog", "{tmp}/none"], 1, "ArchiveError")],
    "push": [(["{tmp}/none", "--registry", "127.0.0.1:9"], 1, "ArchiveError")],
    "kube": [(["{tmp}/none", "--registry", "127.0.0.1:9"], 1, "ArchiveError")],
    "example": [([], 0, True), (["demo", "{tmp}/example"], 0, True), (["none", "{tmp}/example"], 2, "UsageError")],
}


def json_commands() -> set[str]:
    names = set()
    for command in app.registered_commands:
        if "json_out" in inspect.signature(command.callback).parameters:
            names.add(command.name or command.callback.__name__.replace("_", "-"))
    return names


def test_every_json_command_is_covered() -> None:
    assert json_commands() == set(CASES), "a command with --json needs its cases here"


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folders = {}
    for name in ("set", "damaged"):
        root = tmp_path_factory.mktemp(name)
        manifest = synthetic_set.make_set(root, [3000, 2000])
        manifest = add_parity_volumes(lambda k: root / layout.volume_folder(manifest.set_id, k), manifest,
                                      ParityOptions(1))
        synthetic_set.write_metadata(root, manifest)
        folders[name] = str(root)
    flip(next(Path(folders["damaged"]).glob("*-vol001/blobs/*")), 5)
    return folders


@pytest.mark.parametrize("command,case", [(c, i) for c, cases in CASES.items() for i in range(len(cases))])
def test_json_output_is_exactly_one_document(command: str, case: int, sets: dict[str, str], tmp_path: Path) -> None:
    args, exit_code, expected = CASES[command][case]
    filled = [a.format(tmp=tmp_path, **sets) for a in args]
    result = CliRunner().invoke(app, [command, *filled, "--json"])
    assert result.exit_code == exit_code, result.output
    document = json.loads(result.stdout)  # one document and nothing else, or this raises
    assert isinstance(document, dict)
    if isinstance(expected, bool):
        assert document["ok"] is expected
    elif isinstance(expected, str):
        assert document["ok"] is False and document["error"]["type"] == expected
        assert document["error"]["message"] and document["error"]["message"] in result.stderr
        assert document["error"]["exit_code"] == exit_code


def test_a_listed_command_module_that_is_missing_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import imgbuild.cli as cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "cmd_missing"])
    with pytest.raises(ModuleNotFoundError, match="cmd_missing"):
        cli._register()


@pytest.mark.parametrize("args", [["verify", "--json", "--no-such-option", "x"], ["load", "--json"],
                                  ["archive", "--json", "img", "--media", "bd25", "--level", "many"]])
def test_arguments_the_parser_refuses_give_one_json_document(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    document = json.loads(result.stdout)
    assert document["ok"] is False and document["error"]["type"] == "UsageError"
    assert document["error"]["message"] and "Usage:" in result.stderr
