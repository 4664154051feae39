"""Rules see only values that validated: no finding follows from a value already rejected.

A value is *rejected* when a schema error removed it (its default stood in so the cross-field
rules could still run) or when an earlier rule reported an error at it. Rules do not declare
what they read: while a rule runs, every field read on the recipe's sections is checked against
the rejected paths, and a rule that reads one stops there — its findings up to that point (made
from values that validated) are kept, the rest would be about a value the user did not choose
or one already explained, and are not made. A skipped rule is not reported.

Reading a section on the way to its fields (`cfg.policy.dtensor_cfg`) does not count; reading a
leaf value at, under or above a rejected path (a list holding a rejected item) does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel

from lora_rl.config.base import Section
from lora_rl.config.diagnostics import KeyPath
from lora_rl.config.recipe import NoSingleAlgorithm


class _Unvalidated(BaseException):
    """A rule read a rejected value. A BaseException, so that a rule's own `except Exception`
    (around a file read, a model lookup) cannot swallow it."""


def _section_paths(node: Any, path: KeyPath, out: dict[int, KeyPath]) -> dict[int, KeyPath]:
    """id(section object) -> its YAML key path, for every section in the recipe tree."""
    if isinstance(node, BaseModel):
        out[id(node)] = path
        for name, info in type(node).model_fields.items():
            _section_paths(node.__dict__.get(name), path + (info.alias or name,), out)
    elif isinstance(node, (list, tuple)):
        for index, item in enumerate(node):
            _section_paths(item, path + (index,), out)
    elif isinstance(node, dict):
        for key, item in node.items():
            _section_paths(item, path + (key,), out)
    return out


def overlaps(read: KeyPath, rejected: KeyPath) -> bool:
    """A read at, under or above a rejected path (the list that holds a rejected item)."""
    shorter = min(len(read), len(rejected))
    return read[:shorter] == rejected[:shorter]


class ReadGuard:
    """Runs rules so that none reads a rejected value; `reject` adds to what is rejected."""

    def __init__(self, config: BaseModel,
                 rejected: set[KeyPath] | frozenset[KeyPath] = frozenset()) -> None:
        self._config = config  # keeps every section alive, so the ids below stay theirs
        self._section_paths: dict[int, KeyPath] | None = None
        self.rejected: set[KeyPath] = set(rejected)

    @property
    def _paths(self) -> dict[int, KeyPath]:
        # Only a recipe with rejected values needs them: built on the first guarded read.
        if self._section_paths is None:
            self._section_paths = _section_paths(self._config, (), {})
        return self._section_paths

    def reject(self, path: KeyPath) -> None:
        # A finding about the recipe as a whole (no algorithm section) rejects no value.
        if path:
            self.rejected.add(path)

    def findings(self, check: Callable[..., Iterator[Any]], *args: Any) -> list[Any]:
        """What `check(*args)` yields until it reads a rejected value."""
        out: list[Any] = []
        try:
            if not self.rejected:  # nothing to guard (a valid recipe, so far): plain reads
                out.extend(check(*args))
                return out
            with self._watching():
                try:
                    for finding in check(*args):
                        out.append(finding)
                except _Unvalidated:
                    pass
        except NoSingleAlgorithm:
            # The rule depends on which algorithm runs, and LR100 already says none (or
            # several) is set: like a rejected value, what it would say is not said.
            pass
        return out

    def _read(self, section: BaseModel, name: str, value: Any) -> None:
        base = self._paths.get(id(section))
        if base is None or isinstance(value, BaseModel) or not self.rejected:
            return
        info = type(section).model_fields[name]
        read = base + (info.alias or name,)
        if any(overlaps(read, bad) for bad in self.rejected):
            raise _Unvalidated(read)

    @contextmanager
    def _watching(self) -> Iterator[None]:
        guard = self

        def __getattribute__(section: BaseModel, name: str) -> Any:  # noqa: N807
            value = object.__getattribute__(section, name)
            if name in type(section).__pydantic_fields__:
                guard._read(section, name, value)
            return value

        # Installed on the base class for the length of one rule only: sections keep plain
        # attribute access everywhere else (training reads them in hot loops).
        Section.__getattribute__ = __getattribute__  # type: ignore[method-assign]
        try:
            yield
        finally:
            del Section.__getattribute__
