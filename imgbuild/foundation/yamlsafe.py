"""Bounded reading and composing of the YAML files imgbuild reads (recipes, and recipe text kept in a set).

A YAML file can ask for far more work than its size suggests: nested anchors and aliases ("billion laughs")
expand a few hundred bytes into billions of nodes, an alias can point at the collection that holds it, deep
nesting overflows Python's stack, and a FIFO or device named as a recipe never ends. These limits are far
above any real recipe and keep every refusal under a second and a few megabytes:

- the file is a regular file of at most ``MAX_BYTES``;
- at most ``MAX_DEPTH`` nested collections and ``MAX_NODES`` nodes, counting every alias expansion
  (the counting happens while the node tree is turned into data: see ``NodeBudget``);
- an alias may not point at a collection that contains it.

Every refusal is a RecipeError naming the file, line and column.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from imgbuild.foundation.errors import RecipeError

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 10_000


if yaml.__with_libyaml__:
    from yaml.composer import Composer
    from yaml.constructor import SafeConstructor
    from yaml.cyaml import CParser
    from yaml.resolver import Resolver

    class _Base(Composer, CParser, SafeConstructor, Resolver):  # type: ignore[misc]
        """libyaml scans and parses (fast, and it refuses nesting beyond its own limit); Python composes,
        so the composer below can count."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
else:  # pragma: no cover - PyYAML without libyaml: slower, same limits
    _Base = yaml.SafeLoader  # type: ignore[misc,assignment]


def read_text(path: Path, what: str = "recipe") -> str:
    """The UTF-8 text of a regular file of at most MAX_BYTES; FIFOs, devices and folders are refused."""
    shown = str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the fstat below then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise RecipeError(f"cannot read {what}: {exc.strerror or exc}", file=shown) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RecipeError(f"cannot read {what}: not a regular file ({_kind(info.st_mode)})", file=shown)
        if info.st_size > MAX_BYTES:
            raise RecipeError(f"{what} too large: {info.st_size} bytes (the limit is {MAX_BYTES})", file=shown)
        try:
            data = handle.read(MAX_BYTES + 1)  # the size may change between fstat and read
        except OSError as exc:
            raise RecipeError(f"cannot read {what}: {exc.strerror or exc}", file=shown) from None
    if len(data) > MAX_BYTES:
        raise RecipeError(f"{what} too large: more than {MAX_BYTES} bytes", file=shown)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise RecipeError(f"not UTF-8 text (byte {exc.start})", file=shown, line=line) from None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _where(file: str, mark: Any) -> dict[str, int | str | None]:
    return {"file": file, "line": mark.line + 1 if mark else None, "column": mark.column + 1 if mark else None}


class _BoundedLoader(_Base):
    """SafeLoader whose composer refuses nesting deeper than MAX_DEPTH and more than MAX_NODES nodes."""

    file = "<yaml>"

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        mark = self.peek_event().start_mark
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise RecipeError(f"more than {MAX_NODES} YAML nodes", **_where(self.file, mark))  # type: ignore[arg-type]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise RecipeError(f"nested deeper than {MAX_DEPTH} levels", **_where(self.file, mark))  # type: ignore[arg-type]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def compose(text: str, file: str) -> yaml.Node | None:
    """The node tree of one YAML document, within the limits; syntax errors name file:line:column."""
    loader = _BoundedLoader(text)
    loader.file = file
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise RecipeError(f"YAML syntax: {exc.problem or exc.context}", **_where(file, mark)) from None  # type: ignore[arg-type]
    except yaml.YAMLError as exc:
        raise RecipeError(f"YAML syntax: {exc}", file=file) from None
    finally:
        loader.dispose()


class NodeBudget:
    """Counts the nodes visited while a node tree becomes data (aliases count each time they are expanded)
    and refuses an alias that points at a collection containing it."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.visited = 0
        self.open: set[int] = set()

    def enter(self, node: yaml.Node) -> None:
        mark = node.start_mark
        if id(node) in self.open:
            raise RecipeError("an alias refers to a collection that contains it", **_where(self.file, mark))  # type: ignore[arg-type]
        self.visited += 1
        if self.visited > MAX_NODES:
            raise RecipeError(f"more than {MAX_NODES} values once aliases are expanded",
                              **_where(self.file, mark))  # type: ignore[arg-type]
        if len(self.open) >= MAX_DEPTH:
            raise RecipeError(f"nested deeper than {MAX_DEPTH} levels once aliases are expanded",
                              **_where(self.file, mark))  # type: ignore[arg-type]
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            self.open.add(id(node))

    def leave(self, node: yaml.Node) -> None:
        self.open.discard(id(node))
