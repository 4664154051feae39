"""`${...}` interpolation, OmegaConf-compatible for what NeMo RL recipes use.

`${a.b}` is an absolute key path, `${.x}` / `${..x}` are relative to the mapping holding the
value, and `${name:arg,...}` calls a resolver (`mul`, `max`, `min`, `add`, `sub`, `div`,
`oc.env`). A value that is exactly one interpolation keeps the referenced value's type; text
around an interpolation makes a string.

`${oc.env:NAME}` / `${oc.env:NAME,default}` reads an environment variable. Its value is a
secret as far as output goes: every value read is recorded (`EnvReads`), and diagnostics and
`explain` show `${oc.env:NAME}` in its place. `LORA_RL_OC_ENV=off` turns the resolver off
(an error at the key that uses it), for linting recipes you do not trust.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
import os
from collections.abc import Callable
from functools import reduce
from typing import Any

import yaml

from lora_rl.config.diagnostics import Diagnostic, KeyPath, RecipeError, dotted
from lora_rl.config.yaml_source import SourceMap

OC_ENV_SWITCH = "LORA_RL_OC_ENV"
"""Set to `off` (or 0/false/no) to refuse `${oc.env:...}`."""
MIN_MASKED = 3
"""Env values shorter than this are not masked: replacing every `1` in a message would garble
it, and a one- or two-character value holds no secret worth the name."""


def oc_env_enabled() -> bool:
    return os.environ.get(OC_ENV_SWITCH, "on").strip().lower() not in ("off", "0", "false", "no")


@dataclasses.dataclass
class EnvReads:
    """The environment values a recipe read through `${oc.env:...}`, to mask in output."""

    reads: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def add(self, name: str, value: Any) -> None:
        for text in {str(value), repr(value)[1:-1] if isinstance(value, str) else str(value),
                     os.environ.get(name, "")}:
            if len(text.strip()) >= MIN_MASKED:
                self.reads.append((name, text))
        self.reads.sort(key=lambda read: -len(read[1]))  # longest first: no partial leftovers

    def mask(self, text: str) -> str:
        for name, value in self.reads:
            text = text.replace(value, f"${{oc.env:{name}}}")
        return text


def _env(name: str, default: Any = None) -> Any:
    if not oc_env_enabled():
        raise ValueError(f"oc.env is turned off ({OC_ENV_SWITCH}=off): the recipe reads "
                         f"{name} from the environment")
    value = os.environ.get(str(name))
    if value is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set and has no default")
        return default
    return _scalar(value)


def _numbers(function: Callable[..., Any]) -> Callable[..., Any]:
    """Arithmetic on numbers only: `${mul:abc,1000000000}` would otherwise build a 3 GB string
    and `${add:[1],[2]}` a list."""
    def checked(*args: Any) -> Any:
        for arg in args:
            if isinstance(arg, bool) or not isinstance(arg, (int, float)):
                raise TypeError(f"{arg!r} is not a number")
        return function(*args)

    return checked


RESOLVERS: dict[str, Callable[..., Any]] = {
    "mul": _numbers(lambda *a: reduce(operator.mul, a)),
    "add": _numbers(lambda *a: sum(a)),
    "sub": _numbers(lambda a, b: a - b),
    "div": _numbers(lambda a, b: a / b),
    "max": _numbers(lambda *a: max(a)),
    "min": _numbers(lambda *a: min(a)),
    "oc.env": _env,
}
MAX_TEXT = 1024 * 1024
"""Longest string an interpolation may produce (`a: ${b}${b}`, `b: ${c}${c}`, ... doubles)."""
MAX_COPIED_VALUES = 100_000
"""Most values that references to whole sections may copy in total (the same bomb, nested)."""


class _Ref:
    def __init__(self, path: str) -> None:
        self.path = path


class _Call:
    def __init__(self, name: str, args: list[list[Any]]) -> None:
        self.name = name
        self.args = args


def _parse(text: str, start: int, stop_chars: str) -> tuple[list[Any], int]:
    """Parse text into a list of str and _Ref/_Call parts, stopping at an unnested stop char."""
    parts: list[Any] = []
    buf = ""
    i = start
    while i < len(text):
        if text.startswith("${", i):
            if buf:
                parts.append(buf)
                buf = ""
            node, i = _parse_interp(text, i + 2)
            parts.append(node)
            continue
        if text[i] in stop_chars:
            break
        buf += text[i]
        i += 1
    if buf:
        parts.append(buf)
    return parts, i


def _parse_interp(text: str, i: int) -> tuple[Any, int]:
    head, j = _parse(text, i, ":}")
    if j >= len(text):
        raise ValueError(f"unclosed '${{' in {text!r}")
    name = "".join(p for p in head if isinstance(p, str)).strip()
    if text[j] == "}":
        if not all(isinstance(p, str) for p in head) or not name:
            raise ValueError(f"bad interpolation in {text!r}")
        return _Ref(name), j + 1
    args: list[list[Any]] = []
    j += 1
    while True:
        arg, j = _parse(text, j, ",}")
        if j >= len(text):
            raise ValueError(f"unclosed '${{{name}:' in {text!r}")
        if arg or text[j] == ",":
            args.append(arg)
        if text[j] == "}":
            return _Call(name, args), j + 1
        j += 1


def _scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


class _Resolver:
    def __init__(self, root: dict, positions: SourceMap) -> None:
        self.root = root
        self.positions = positions
        self.active: list[KeyPath] = []
        self.copied = 0
        self.entry: KeyPath = ()
        self.env = EnvReads()

    def resolve_tree(self, node: Any, path: KeyPath) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            if isinstance(value, (dict, list)):
                self.resolve_tree(value, path + (key,))
            elif isinstance(value, str) and "${" in value:
                if not self.active:
                    self.entry = path + (key,)
                node[key] = self.value_at(path + (key,))

    def value_at(self, path: KeyPath) -> Any:
        value = self._lookup(path)
        if isinstance(value, (dict, list)):
            return self._section_copy(value, path)
        if not (isinstance(value, str) and "${" in value):
            return value
        if path in self.active:
            cycle = " -> ".join(dotted(p) for p in (*self.active, path))
            raise _Fail(path, f"interpolation cycle: {cycle}")
        self.active.append(path)
        try:
            parts, end = _parse(value, 0, "")
            resolved = self._join(parts, path)
        except ValueError as exc:
            raise _Fail(path, str(exc)) from None
        finally:
            self.active.pop()
        self._store(path, resolved)
        return resolved

    def _section_copy(self, value: dict | list, path: KeyPath) -> dict | list:
        """A reference to a whole section gets a resolved *copy*: sharing one object between
        two keys would make the tree a graph (`a: [${b},${b}]`, `b: [${c},${c}]`, ... is then
        exponentially large to walk)."""
        if path in self.active:
            cycle = " -> ".join(dotted(p) for p in (*self.active, path))
            raise _Fail(path, f"interpolation cycle: {cycle}")
        self.active.append(path)
        try:
            self.resolve_tree(value, path)
        finally:
            self.active.pop()
        self.copied += _count(value, MAX_COPIED_VALUES - self.copied + 1)
        if self.copied > MAX_COPIED_VALUES:
            raise _Fail(path, f"references to sections copy more than {MAX_COPIED_VALUES} values")
        return copy.deepcopy(value)

    def _join(self, parts: list[Any], path: KeyPath) -> Any:
        values = [self._evaluate(p, path) if not isinstance(p, str) else p for p in parts]
        if len(values) == 1 and not isinstance(parts[0], str):
            return values[0]
        text = "".join(str(v) for v in values)
        if len(text) > MAX_TEXT:
            raise ValueError(f"the interpolated text is longer than {MAX_TEXT} characters")
        return text

    def _evaluate(self, part: Any, path: KeyPath) -> Any:
        if isinstance(part, _Ref):
            return self.value_at(self._target(part.path, path))
        resolver = RESOLVERS.get(part.name)
        if resolver is None:
            raise ValueError(f"unknown resolver '{part.name}' (known: {', '.join(RESOLVERS)})")
        args = [self._argument(arg, path) for arg in part.args]
        try:
            value = resolver(*args)
        except (TypeError, ArithmeticError, ValueError) as exc:
            raise ValueError(f"${{{part.name}:...}} with {args}: {exc}") from None
        if resolver is _env and args:
            self.env.add(str(args[0]), value)
        return value

    def _argument(self, arg: list[Any], path: KeyPath) -> Any:
        if len(arg) == 1 and not isinstance(arg[0], str):
            return self._evaluate(arg[0], path)
        return _scalar(str(self._join(arg, path)).strip())

    def _target(self, ref: str, path: KeyPath) -> KeyPath:
        if ref.startswith("."):
            depth = len(ref) - len(ref.lstrip("."))
            base = path[: len(path) - depth]
            rest = ref[depth:]
        else:
            base, rest = (), ref
        target = base + tuple(int(p) if p.isdigit() else p for p in rest.split(".") if p)
        try:
            self._lookup(target)
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"${{{ref}}} refers to {dotted(target) or 'the root'}, which is "
                             "not set in the recipe") from None
        return target

    def _lookup(self, path: KeyPath) -> Any:
        node: Any = self.root
        for part in path:
            node = node[part]
        return node

    def _store(self, path: KeyPath, value: Any) -> None:
        node: Any = self.root
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value


def _count(value: Any, limit: int) -> int:
    """Values in a tree, counting stops past `limit`."""
    total, stack = 0, [value]
    while stack and total <= limit:
        node = stack.pop()
        total += 1
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return total


class _Fail(Exception):
    def __init__(self, path: KeyPath, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def resolve_interpolations(data: dict, positions: SourceMap) -> EnvReads:
    """Resolve every `${...}` in place; returns the environment values read, for masking.
    Raises RecipeError (LR008) naming the key and place, with environment values masked."""
    resolver = _Resolver(data, positions)
    try:
        try:
            resolver.resolve_tree(data, ())
        except RecursionError:
            raise _Fail(resolver.entry, "interpolations nested too deeply, or too long a chain "
                        "of references") from None
    except _Fail as fail:
        where = positions.get(fail.path)
        raise RecipeError([Diagnostic(
            "LR008", "error", resolver.env.mask(f"{dotted(fail.path)}: {fail.message}"),
            fail.path, where.value if where else None,
            "interpolations look like ${policy.model_name} or ${mul:${a.b},2}",
        )]) from None
    return resolver.env
