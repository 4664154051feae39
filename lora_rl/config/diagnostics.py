"""What validation reports: a located, rule-tagged diagnostic, and the error that carries them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lora_rl.errors import LoraRlError

Severity = Literal["error", "warning"]

USAGE_RULES = frozenset({"LR010", "LR007"})
"""Problems with the command line rather than the recipe: a file that cannot be read (LR010),
an override (--set) that cannot be applied (LR007). `validate` exits 2 on them; a recipe that
was read and is wrong (empty, bad YAML, bad values) exits 1."""
KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Location:
    """Where a value came from. Lines and columns are 1-based."""

    file: str
    line: int
    column: int
    via: str | None = None
    """How the value got into the recipe when it is not the recipe's own text, e.g.
    "inherited through defaults:" or "override --set a.b=1"."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    rule: str
    severity: Severity
    message: str
    path: KeyPath = ()
    location: Location | None = None
    fix: str | None = None

    @property
    def dotted_path(self) -> str:
        return dotted(self.path)


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class RecipeError(LoraRlError):
    """Loading stopped before the recipe could be validated (I/O, YAML syntax, defaults, ...)."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(d.message for d in self.diagnostics)
