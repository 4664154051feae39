"""Read one YAML file into plain Python values plus the source position of every key and value.

PyYAML's composer gives nodes with marks; walking them ourselves (instead of `safe_load`) keeps
positions, rejects duplicate keys (PyYAML silently keeps the last) and bounds alias expansion, so
a "billion laughs" document is an error instead of an out-of-memory kill.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lora_rl.config.diagnostics import Diagnostic, KeyPath, Location, RecipeError
from lora_rl.config.yaml_errors import explain as explain_syntax_error

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_VALUES = 100_000
MAX_DEPTH = 64
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_BINARY_TAG = "tag:yaml.org,2002:binary"
_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})


class _TooDeep(Exception):
    def __init__(self, mark: Any) -> None:
        super().__init__("too deep")
        self.mark = mark


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-5` as a float, as OmegaConf (and so NeMo RL) does; YAML 1.1
    alone requires a dot (`1.0e-5`) and would hand the string "1e-5" to the schema.

    It also stops composing at MAX_DEPTH: PyYAML's scanner is quadratic in the depth of flow
    collections (`[[[[...` 5000 deep takes seconds before Python's recursion limit is hit)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:  # the root is depth 1 here, depth 0 for _Walker
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass(frozen=True)
class Positions:
    """Where a mapping key and its value are written (the key is None for list items)."""

    key: Location | None
    value: Location

    @property
    def best(self) -> Location:
        return self.key or self.value


SourceMap = dict[KeyPath, Positions]


def _fail(rule: str, message: str, location: Location | None, fix: str | None = None,
          path: KeyPath = ()) -> RecipeError:
    return RecipeError([Diagnostic(rule, "error", message, path, location, fix)])


def _location(mark: Any, file: str, via: str | None = None) -> Location:
    return Location(file, mark.line + 1, mark.column + 1, via)


def read_text(path: Path) -> str:
    """Read a recipe file, turning every I/O problem into a RecipeError (rule LR010)."""
    shown = str(path)
    if path.is_dir():
        raise _fail("LR010", f"{shown} is a directory, not a recipe file", None,
                    "pass a .yaml file")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise _fail("LR010", f"{shown} is {size} bytes; recipes are limited to "
                        f"{MAX_FILE_BYTES} bytes", None)
        with path.open("rb") as stream:  # bounded: st_size is 0 for /dev/zero, pipes, ...
            raw = stream.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise _fail("LR010", f"{shown} is larger than {MAX_FILE_BYTES} bytes, the limit for "
                        "a recipe", None)
    except FileNotFoundError:
        raise _fail("LR010", f"{shown}: no such file", None, "check the path") from None
    except OSError as exc:
        raise _fail("LR010", f"{shown}: cannot read ({exc.strerror})", None) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _fail("LR004", f"not UTF-8 text (byte 0x{raw[exc.start]:02x})",
                    Location(shown, line, 1), "save the recipe as UTF-8") from None


def parse_yaml(text: str, file: str, via: str | None = None) -> tuple[Any, SourceMap]:
    """Parse one YAML document into (value, positions). Raises RecipeError."""
    try:
        loader = RecipeLoader(text)  # checks for non-printable characters already
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        where = Location(file, before.count("\n") + 1, len(before) - before.rfind("\n"), via)
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise _fail("LR004", f"character #x{code:04x} is not allowed in YAML", where,
                    "remove the control character") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        walker = _Walker(loader, file, via)
        walker.check_expansion(node)
        value = walker.build(node, (), 0)
        return value, walker.positions
    except _TooDeep as exc:
        raise _fail("LR009", f"values nested deeper than {MAX_DEPTH} levels",
                    _location(exc.mark, file, via)) from None
    except yaml.MarkedYAMLError as exc:
        cause = explain_syntax_error(exc, text)
        if cause is not None:
            raise _fail("LR004", f"YAML syntax: {cause.message}",
                        Location(file, cause.line, cause.column, via), cause.fix) from None
        mark = exc.problem_mark or exc.context_mark
        where = _location(mark, file, via) if mark else Location(file, 1, 1, via)
        problem = exc.problem or str(exc)
        if exc.context and "expected a single document" in exc.context:
            problem = "a recipe is one YAML document, but this file has several ('---')"
        raise _fail("LR004", f"YAML syntax: {problem}", where, _syntax_hint(problem)) from None
    except yaml.YAMLError as exc:
        raise _fail("LR004", f"YAML syntax: {exc}", Location(file, 1, 1, via)) from None
    except RecursionError:
        raise _fail("LR009", f"nesting deeper than the parser can follow (limit {MAX_DEPTH})",
                    Location(file, 1, 1, via)) from None
    finally:
        loader.dispose()


def _syntax_hint(problem: str) -> str | None:
    if "\\t" in problem or "tab" in problem:
        return "indent with spaces; YAML does not allow tabs"
    if "mapping values are not allowed" in problem:
        return "put a space after ':' and check the indentation of the line"
    return None


class _Walker:
    def __init__(self, loader: RecipeLoader, file: str, via: str | None) -> None:
        self.loader = loader
        self.file = file
        self.via = via
        self.positions: SourceMap = {}
        self.count = 0
        self.merged: dict[int, int] = {}
        self.locations: dict[int, Location] = {}

    def check_expansion(self, root: yaml.Node) -> None:
        """Stop an alias/anchor bomb before walking it: count the values the document expands
        to on the node graph (each node once), and point at the smallest node that is too big."""
        sizes: dict[int, int] = {}
        if self._size(root, sizes, 0) <= MAX_VALUES:
            return
        node = root
        while True:
            children = self._children(node)
            biggest = max(children, key=lambda child: sizes.get(id(child), 0), default=None)
            if biggest is None or sizes.get(id(biggest), 0) <= MAX_VALUES:
                break
            node = biggest
        raise _fail("LR009", f"the document expands to more than {MAX_VALUES} values "
                    "(an alias/anchor bomb?)", self._loc(node), "remove the repeated aliases")

    @staticmethod
    def _children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.MappingNode):
            return [value for _, value in node.value]
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        return []

    def _size(self, node: yaml.Node, sizes: dict[int, int], depth: int) -> int:
        """Values `build` would make for `node`, capped; recursive aliases and nesting past
        MAX_DEPTH are left to `build`, which reports them."""
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1
        if depth > MAX_DEPTH:
            return 1
        total = 1
        for child in self._children(node):
            total = min(total + self._size(child, sizes, depth + 1), MAX_VALUES + 1)
        sizes[id(node)] = total
        return total

    def build(self, node: yaml.Node, path: KeyPath, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise _fail("LR009", f"the document expands to more than {MAX_VALUES} values "
                        "(an alias/anchor bomb?)", self._loc(node), "remove the repeated aliases")
        if depth > MAX_DEPTH:
            raise _fail("LR009", f"values nested deeper than {MAX_DEPTH} levels", self._loc(node))
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
            raise _fail("LR004", f"tag '{node.tag}' is not allowed in a recipe (safe YAML only)",
                        self._loc(node), "remove the '!!' tag")
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, child in enumerate(node.value):
                self.positions[path + (index,)] = Positions(None, self._loc(child))
                items.append(self.build(child, path + (index,), depth + 1))
            return items
        if node.tag == _TIMESTAMP_TAG:
            return node.value  # a date-looking string is text in a recipe, not a datetime
        if node.tag == _BINARY_TAG:
            raise _fail("LR004", "binary (!!binary) values are not allowed in a recipe",
                        self._loc(node))
        return self._construct(node)

    def _construct(self, node: yaml.Node) -> Any:
        """A scalar (or key) as Python. Explicit tags can fail outside PyYAML's error types
        (`!!float abc` -> ValueError, `!!bool x` -> KeyError, an empty `!!float` -> IndexError,
        a 5000-digit int -> ValueError)."""
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except (ValueError, KeyError, IndexError, TypeError, OverflowError, RecursionError):
            shown = repr(node.value) if isinstance(node.value, str) else "this value"
            if len(shown) > 40:
                shown = shown[:37] + "..."
            tag = str(node.tag).rsplit(":", 1)[-1]
            raise _fail("LR004", f"{shown} cannot be read as {tag}", self._loc(node),
                        "remove the '!!' tag or fix the value") from None

    def _mapping(self, node: yaml.MappingNode, path: KeyPath, depth: int) -> dict[str, Any]:
        merged = self._flatten(node)
        out: dict[str, Any] = {}
        explicit: set[str] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = self._construct(key_node)
            if not isinstance(key, str):
                if isinstance(key, (int, float, bool)) or key is None:
                    key = str(key) if key is not None else "null"
                else:
                    raise _fail("LR004", "mapping keys must be plain names",
                                self._loc(key_node))
            if key in out and key in explicit:
                first = self.positions[path + (key,)].best
                raise _fail("LR005", f"duplicate key '{key}' (first written at line "
                            f"{first.line})", self._loc(key_node),
                            "keep one of the two; YAML would silently use the last",
                            path + (key,))
            if key in out:  # a key from a `<<:` merge, overridden: YAML merge semantics
                stale = path + (key,)
                if isinstance(out[key], (dict, list)):
                    for old in [p for p in self.positions if p[: len(stale)] == stale]:
                        del self.positions[old]
                self.positions.pop(stale, None)
            if index >= merged:
                explicit.add(key)
            self.positions[path + (key,)] = Positions(self._loc(key_node), self._loc(value_node))
            out[key] = self.build(value_node, path + (key,), depth + 1)
        return out

    def _flatten(self, node: yaml.MappingNode) -> int:
        """Resolve YAML merge keys (`<<: *anchor`) in place; returns how many of the pairs
        (at the front) came from merges. Remembered per node, since an aliased node is walked
        again after PyYAML already flattened it."""
        if id(node) not in self.merged:
            merge_keys = sum(1 for key, _ in node.value if key.tag == "tag:yaml.org,2002:merge")
            explicit = len(node.value) - merge_keys
            self.loader.flatten_mapping(node)
            self.merged[id(node)] = len(node.value) - explicit
        return self.merged[id(node)]

    def _loc(self, node: yaml.Node) -> Location:
        # cached per node: an aliased node is walked once per alias
        found = self.locations.get(id(node))
        if found is None:
            found = self.locations[id(node)] = _location(node.start_mark, self.file, self.via)
        return found
