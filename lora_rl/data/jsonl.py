"""Read JSONL records, reporting every bad line with its file:line instead of a traceback."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad data: the message names the file and line and says how to fix it."""


@dataclass(frozen=True)
class Record:
    file: str
    line: int
    fields: dict[str, Any]

    def text(self, key: str) -> str:
        return self.fields[key]


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[Record]:
    """All records of `path`; every listed field must be a string. Raises DataError."""
    shown = str(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{shown}: no such data file (check data.train_data_path / "
                        "data.val_data_path; paths are relative to the "
                        "working directory)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{shown}: cannot read as UTF-8 text ({exc})") from None
    records: list[Record] = []
    problems: list[str] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            fields = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(f"{shown}:{number}:{exc.colno}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(fields, dict):
            problems.append(f"{shown}:{number}: a record must be a JSON object, found "
                            f"{type(fields).__name__}")
            continue
        missing = [k for k in required if not isinstance(fields.get(k), str)]
        if missing:
            problems.append(f"{shown}:{number}: field(s) {', '.join(missing)} missing or not "
                            f"a string (has: {', '.join(sorted(fields)) or 'nothing'})")
            continue
        records.append(Record(shown, number, fields))
    if problems:
        more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError("\n".join(problems[:10]) + more +
                        "\nfix: correct those lines, or point data.*_key at the right field names")
    if not records:
        raise DataError(f"{shown}: the data set is empty (no records)")
    return records
