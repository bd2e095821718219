"""The package's plan holds: stages import only stages below them (import-linter's contracts in
pyproject.toml), no module imports imgbuild code inside a function, where a cycle could hide, and every name
a module uses is defined (pyflakes' checks through ruff, so a moved function cannot leave a caller behind)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "imgbuild"


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is missing: install the test extra (pip install -e .[test])")
    return found


def test_import_contracts_are_kept() -> None:
    result = subprocess.run([tool("lint-imports")], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def function_level_imports(source: str) -> list[int]:
    """Line numbers of imports of imgbuild modules inside a function body."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom) and (inner.module or "").split(".")[0] == "imgbuild":
                lines.append(inner.lineno)
            elif isinstance(inner, ast.Import) and any(a.name.split(".")[0] == "imgbuild" for a in inner.names):
                lines.append(inner.lineno)
    return lines


def test_the_checker_finds_an_import_inside_a_function() -> None:
    assert function_level_imports("def f():\n    from imgbuild.setformat import layout\n") == [2]
    assert function_level_imports("from imgbuild.setformat import layout\n") == []


def test_no_module_imports_imgbuild_inside_a_function() -> None:
    found = {str(path.relative_to(PACKAGE.parent)): lines
             for path in sorted(PACKAGE.rglob("*.py"))
             if (lines := function_level_imports(path.read_text()))}
    assert found == {}


def test_every_name_used_is_defined_and_every_import_used() -> None:
    # --no-respect-gitignore: imgbuild/build/ must be checked although a top-level build/ is ignored
    result = subprocess.run([tool("ruff"), "check", "--select", "F", "--no-respect-gitignore", "--output-format",
                             "concise", "imgbuild", "runtime/imgbuild_runtime"],
                            cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
