"""Load a recipe: YAML with positions, ${VAR} interpolation, validation, and errors that say where.

Every problem becomes one RecipeError naming file:line:column and the key path (`app.context[0].src`),
with a "did you mean" for a misspelled key. Interpolation: `${VAR}` (must be set), `${VAR:-default}`
(default when unset or empty), `$${` for a literal `${`. A `$` not followed by `{` is left alone, so shell
snippets such as `$HOME` in a serve command pass through.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from imgbuild.foundation import yamlsafe
from imgbuild.foundation.errors import RecipeError
from imgbuild.recipe.model import HubCheckpoint, LocalCheckpoint, Recipe

KeyPath = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based line and column

_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STR_TAG = "tag:yaml.org,2002:str"


def _short(text: object, limit: int = 60) -> str:
    shown = text if isinstance(text, str) else repr(text)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def format_key(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class LoadedRecipe:
    """A valid recipe and where it came from. Relative paths in it resolve against `folder`."""

    recipe: Recipe
    path: Path
    folder: Path
    text: str
    positions: Mapping[KeyPath, Position] = field(default_factory=dict, repr=False, compare=False)

    def resolve(self, relative: str) -> Path:
        return (self.folder / os.path.expanduser(relative)).resolve()

    def error(self, message: str, key: KeyPath, hint: str | None = None) -> RecipeError:
        """A RecipeError pointing at `key` (or its nearest parent with a known position)."""
        return _error(str(self.path), self.positions, key, message, hint)


def _error(file: str, positions: Mapping[KeyPath, Position], key: KeyPath, message: str,
           hint: str | None = None) -> RecipeError:
    probe = key
    while probe and probe not in positions:
        probe = probe[:-1]
    line, column = positions.get(probe, (None, None))
    return RecipeError(message, file=file, line=line, column=column, key=format_key(key) or None, hint=hint)


class _Tree:
    """Turns a composed YAML node tree into plain data, interpolating strings and recording positions."""

    def __init__(self, file: str, env: Mapping[str, str] | None) -> None:
        self.file = file
        self.env = env  # None: leave ${VAR} as written
        self.budget = yamlsafe.NodeBudget(file)
        self.positions: dict[KeyPath, Position] = {}
        self.key_positions: dict[KeyPath, Position] = {}
        self.constructor = yaml.SafeLoader("")

    def convert(self, node: yaml.Node, path: KeyPath) -> Any:
        self.budget.enter(node)
        try:
            return self._convert(node, path)
        finally:
            self.budget.leave(node)

    def _convert(self, node: yaml.Node, path: KeyPath) -> Any:
        self.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    # A collection as a key could hold an alias bomb that str() would expand.
                    raise self.fail(key_node, path, "a key must be a plain value, not a list or mapping")
                key = self.scalar(key_node, path)
                if not isinstance(key, str):
                    key = str(key)
                if key in out:
                    raise self.fail(key_node, path + (key,), f"duplicate key `{key}`")
                self.key_positions[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out[key] = self.convert(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, path + (i,)) for i, item in enumerate(node.value)]
        if node.tag == _STR_TAG:
            return self.interpolate(node, path) if self.env is not None else node.value
        return self.scalar(node, path)

    def scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except (ValueError, OverflowError) as exc:
            digits = sum(c.isdigit() for c in str(node.value))
            if digits > sys.get_int_max_str_digits():  # Python refuses to convert longer integers
                reason = f"a number of {digits} digits (at most {sys.get_int_max_str_digits()})"
            else:
                reason = _short(str(exc))
            raise self.fail(node, path, f"cannot read value {_short(node.value)}: {reason}") from None

    def fail(self, node: yaml.Node, path: KeyPath, message: str, hint: str | None = None) -> RecipeError:
        return RecipeError(message, file=self.file, line=node.start_mark.line + 1,
                           column=node.start_mark.column + 1, key=format_key(path) or None, hint=hint)

    def interpolate(self, node: yaml.ScalarNode, path: KeyPath) -> str:
        def substitute(match: re.Match[str]) -> str:
            text = match.group(0)
            if text == "$${":
                return "${"
            expr = match.group(1)
            if expr is None:
                raise self.fail(node, path, "unclosed `${` in value", hint="write `$${` for a literal `${`")
            name, sep, default = expr.partition(":-")
            if not _NAME.match(name) or (not sep and ":" in expr):
                raise self.fail(node, path, f"malformed expression `{text}`",
                                hint="use ${VAR} or ${VAR:-default}")
            value = self.env.get(name)
            if sep:
                return value if value else default
            if value is None:
                raise self.fail(node, path, f"environment variable {name} is not set",
                                hint=f"set {name}, or write ${{{name}:-default}} in the recipe")
            return value

        return _VAR.sub(substitute, node.value)


# Discriminator tags of the checkpoint union, as they appear in pydantic error locations.
_TAGS: dict[type[BaseModel], str] = {HubCheckpoint: "hub", LocalCheckpoint: "local"}


def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, list, dict, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is dict:
        return _model_classes(typing.get_args(annotation)[1])
    if origin in (list, typing.Union, types.UnionType, typing.Annotated, tuple, set):
        return [m for arg in typing.get_args(annotation) for m in _model_classes(arg)]
    return []


def _field_by_key(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.annotation
    return None


def allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys a mapping at pydantic location `loc` accepts (discriminator tags in `loc` narrow unions)."""
    models: list[type[BaseModel]] = [Recipe]
    for part in loc:
        if isinstance(part, int):
            continue
        narrowed = [m for m in models if part in (m.__name__, _TAGS.get(m))]
        if narrowed:
            models = narrowed
            continue
        models = [c for m in models for c in _model_classes(_field_by_key(m, part))]
    return sorted({info.alias or name for m in models for name, info in m.model_fields.items()})


def _data_path(loc: tuple[Any, ...], data: Any) -> KeyPath:
    """Drop the parts of a pydantic location that are not in the data (union and discriminator tags)."""
    path: list[str | int] = []
    for i, part in enumerate(loc):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        elif i < len(loc) - 1:
            continue  # a tag such as "hub" or "function-after[...]": not a key of the recipe
        path.append(part)
    return tuple(path)


def _describe(err: dict[str, Any], loc: tuple[Any, ...], key: str) -> tuple[str, str | None]:
    kind = err["type"]
    if kind == "extra_forbidden":
        choices = allowed_keys(loc[:-1])
        close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else f"allowed keys here: {', '.join(choices)}"
        return f"unknown key `{key}`", hint
    if kind == "missing":
        return f"missing required key `{key}`", None
    shown = _short(repr(err.get("input")))
    message = err["msg"][len("Value error, "):] if err["msg"].startswith("Value error, ") else err["msg"]
    return (f"{message} (got {shown})" if kind not in ("value_error", "checkpoint_kind") else message), None


def _validation_error(file: str, tree: _Tree, data: Any, exc: ValidationError) -> RecipeError:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = _data_path(loc, data)
        message, hint = _describe(err, loc, str(path[-1]) if path else "")
        # Unknown keys point at the key itself; missing keys at the mapping that lacks them.
        positions = tree.key_positions if err["type"] == "extra_forbidden" else tree.positions
        if err["type"] == "missing":
            positions = {path: tree.positions.get(path[:-1], (1, 1))}
        problems.append(_error(file, {**tree.positions, **positions}, path, message, hint))
    problems.sort(key=lambda p: (p.line or 0, p.column or 0))
    first = problems[0]
    if len(problems) > 1:
        more = "\n".join(f"  {p}" for p in problems[1:])
        first.hint = (first.hint + "\n" if first.hint else "") + f"{len(problems) - 1} more problem(s):\n{more}"
    return first


def local_paths(r: Recipe) -> list[tuple[KeyPath, str]]:
    """Every local file or folder the recipe names, as written (relative to its folder, unless absolute)."""
    wanted: list[tuple[KeyPath, str]] = [(("mirrors", "ca_certificates", i), p)
                                         for i, p in enumerate(r.mirrors.ca_certificates)]
    wanted += [(("mirrors", "pip", "find_links", i), p) for i, p in enumerate(r.mirrors.pip.find_links)
               if "://" not in p]
    if r.base.containerfile:
        wanted.append((("base", "containerfile"), r.base.containerfile))
    if r.app:
        if r.app.containerfile:
            wanted.append((("app", "containerfile"), r.app.containerfile))
        wanted += [(("app", "context", i, "src"), c.src) for i, c in enumerate(r.app.context)]
        wanted += [(("app", "checkpoints", i, "path"), c.path) for i, c in enumerate(r.app.checkpoints)
                   if isinstance(c, LocalCheckpoint)]
    return wanted


def _check_files(loaded: LoadedRecipe) -> None:
    """Every local file the recipe names must exist, reported at the line that names it."""
    for key, relative in local_paths(loaded.recipe):
        if not relative:
            raise loaded.error("empty path", key)
        found = loaded.resolve(relative)
        if not found.exists():
            raise loaded.error(f"file not found: {relative} (looked in {found})", key)
        # A Containerfile or CA file is read whole; a device or FIFO would never end.
        regular_only = key[-1] == "containerfile" or key[:2] == ("mirrors", "ca_certificates")
        if not found.is_file() and (regular_only or not found.is_dir()):
            kind = "a regular file" if regular_only else "a regular file or a folder"
            raise loaded.error(f"{relative} is not {kind} ({found})", key)


def parse_recipe_text(text: str, source: str, env: Mapping[str, str] | None = None) -> tuple[Recipe, _Tree]:
    """Compose (bounded), interpolate with `env` (None: leave ${VAR} as written) and validate recipe text."""
    node = yamlsafe.compose(text, source)
    if not isinstance(node, yaml.MappingNode):
        raise RecipeError("a recipe must be a YAML mapping (apiVersion, kind, metadata, base, app)",
                          file=source, line=1, column=1)
    tree = _Tree(source, env)
    try:
        data = tree.convert(node, ())
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise RecipeError(f"YAML: {exc.problem}", file=source, line=mark.line + 1 if mark else None,
                          column=mark.column + 1 if mark else None) from None
    try:
        return Recipe.model_validate(data), tree
    except ValidationError as exc:
        raise _validation_error(source, tree, data, exc) from None


def load_recipe(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> LoadedRecipe:
    """Read, interpolate and validate a recipe; raise RecipeError naming where any problem is."""
    file = Path(path)
    text = yamlsafe.read_text(file)
    recipe, tree = parse_recipe_text(text, str(file), os.environ if env is None else env)
    loaded = LoadedRecipe(recipe=recipe, path=file, folder=file.resolve().parent, text=text,
                          positions={**tree.positions, **tree.key_positions})
    _check_files(loaded)
    return loaded
