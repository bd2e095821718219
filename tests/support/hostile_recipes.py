"""Hostile and unlucky recipes: each writer puts one case into a folder and returns the recipe path.

Used by tests/test_hostile_recipe.py; the same files can be fed to `imgbuild check`/`plan` by hand.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

HEADER = """\
apiVersion: imgbuild/v1
kind: Recipe
metadata:
  name: t
base:
  tag: localhost/t-base:1
  bootstrap:
    suite: bookworm
"""

APP = """\
app:
  tag: localhost/t-app:1
  context:
    - src: file.txt
      dest: {dest}
"""


def alias_bomb(folder: Path, levels: int = 9) -> Path:
    """'Billion laughs': 9 levels of 9 aliases each, 9**9 strings once expanded, under an unknown key."""
    lines = ['x-bomb:', '  a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return _write(folder, HEADER + "\n".join(lines) + "\n")


def self_alias(folder: Path) -> Path:
    return _write(folder, HEADER + "x-loop: &loop [1, *loop]\n")


def deep_nesting(folder: Path, depth: int = 20_000) -> Path:
    return _write(folder, HEADER + "x-deep: " + "[" * depth + "]" * depth + "\n")


def huge_number(folder: Path, digits: int = 100_001) -> Path:
    return _write(folder, HEADER.replace("suite: bookworm", "suite: bookworm\n    x: " + "9" * digits))


def huge_port(folder: Path, digits: int = 100_001) -> Path:
    return _write(folder, HEADER + "app:\n  tag: localhost/t-app:1\n  serve:\n    port: " + "9" * digits + "\n")


def oversized(folder: Path, size: int = 8 * 1024 * 1024) -> Path:
    return _write(folder, HEADER + "#" + "x" * size + "\n")


def fifo(folder: Path) -> Path:
    path = folder / "r.yaml"
    os.mkfifo(path)
    return path


def device(folder: Path) -> Path:
    path = folder / "r.yaml"
    path.symlink_to("/dev/zero")
    return path


def dest_escape(folder: Path) -> Path:
    (folder / "file.txt").write_text("x\n")
    return _write(folder, HEADER + APP.format(dest="../../outside"))


def long_tag(folder: Path) -> Path:
    return _write(folder, HEADER.replace("t-base:1", "t-base:" + "a" * 131_000))


def containerfile_device(folder: Path) -> Path:
    return _write(folder, HEADER + "  containerfile: /dev/zero\n")


CASES: dict[str, Callable[[Path], Path]] = {
    "alias-bomb": alias_bomb, "self-alias": self_alias, "deep-nesting": deep_nesting,
    "huge-number": huge_number, "huge-port": huge_port, "oversized": oversized, "fifo": fifo,
    "device": device, "dest-escape": dest_escape, "long-tag": long_tag,
    "containerfile-device": containerfile_device,
}


def _write(folder: Path, text: str) -> Path:
    path = folder / "r.yaml"
    path.write_text(text)
    return path
