"""The record type every data set is read into (by `files.load_records`), and the error bad data
ends in. (The module keeps its historical name; nothing here parses JSON lines any more.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lora_rl.errors import LoraRlError


class DataError(LoraRlError, ValueError):
    """Bad data: the message names the file and line and says how to fix it."""


@dataclass(frozen=True)
class Record:
    file: str
    line: int
    """Line of a JSON-lines file; the record's 1-based position in other formats."""
    fields: dict[str, Any]
