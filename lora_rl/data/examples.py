"""A tokenized training example and the length limits examples are held to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Overlong = Literal["error", "skip", "truncate"]


@dataclass(frozen=True)
class Example:
    """One token sequence. `loss_mask[t]` is 1 where token t is a training target."""

    input_ids: tuple[int, ...]
    loss_mask: tuple[int, ...]
    source: str = ""


@dataclass(frozen=True)
class Limits:
    max_total: int
    max_prompt: int
    on_overlong: Overlong
