"""Bounded reading of JSON-lines data: a size cap per file and per line, a nesting limit, and
every problem (bad UTF-8, bad JSON, a lone surrogate, an integer out of range) at
file:line:column with a fix, before the Hugging Face `datasets` library sees the file.

Lines are read with a byte limit, so an overlong line is refused after reading the limit, not
the line: a 5 MB line costs 1 MiB of reading. The caps are recipe keys
(`data.max_line_bytes`, `data.max_file_bytes`); what is a regular file is `files.check_path`'s
job (pipes and devices never get here).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_rl.data.jsonl import DataError

MAX_LINE_BYTES = 1024 * 1024
"""Default `data.max_line_bytes`: 1 MiB, some 250k tokens of English text in one record."""
MAX_FILE_BYTES = 2 * 1024 ** 3
"""Default `data.max_file_bytes`: 2 GiB (a data set is held in memory while it is read)."""
MAX_DEPTH = 64
"""Deepest nesting of arrays and objects in one record (a chat record with tool schemas
needs about 10)."""
INT_RANGE = (-(2 ** 63), 2 ** 63 - 1)
"""Integers a data set column can hold (64-bit); Python's `json` reads any size."""


@dataclass(frozen=True)
class Limits:
    line_bytes: int = MAX_LINE_BYTES
    file_bytes: int = MAX_FILE_BYTES


DEFAULT_LIMITS = Limits()


class LineProblem(ValueError):
    """One line that is not a usable JSON record: `str()` is one line starting with
    file:line[:column]; `fix` says what to do."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


class _Deep(Exception):
    pass


class _HugeInt(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def check_file_size(path: Path, limits: Limits, key: str) -> None:
    """DataError when the regular file at `path` is larger than `limits.file_bytes`."""
    size = path.stat().st_size
    if size > limits.file_bytes:
        raise DataError(f"{path}: {size} bytes, more than data.max_file_bytes "
                        f"({limits.file_bytes}) ({key})\nfix: split the file, or raise "
                        "data.max_file_bytes in the recipe if this machine has the memory")


def lines(path: Path, limits: Limits) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes without the newline) of each line; LineProblem at the first
    line longer than `limits.line_bytes`, raised after reading at most that many bytes of it."""
    with path.open("rb") as handle:
        number = 0
        while True:
            raw = handle.readline(limits.line_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > limits.line_bytes and not (len(raw) == limits.line_bytes + 1
                                                     and raw.endswith(b"\n")):
                raise LineProblem(f"{path}:{number}: line longer than data.max_line_bytes "
                                  f"({limits.line_bytes} bytes)", "shorten or split that "
                                  "record, or raise data.max_line_bytes in the recipe")
            yield number, raw.rstrip(b"\r\n")


def parse_line(raw: bytes, path: Path, number: int) -> Any:
    """The JSON value of one line. LineProblem (file:line:column and a fix) for bytes that
    are not UTF-8, invalid JSON, nesting deeper than MAX_DEPTH, a lone surrogate escape in a
    string, or an integer outside 64 bits."""
    where = f"{path}:{number}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(raw, exc, where) from None
    try:
        value = json.loads(text, parse_int=_int)
    except _HugeInt as exc:
        raise LineProblem(f"{where}:{_column_of_number(text, exc.text)}: integer "
                          f"{_shorten(exc.text)} is out of range (64-bit integers only)",
                          "write it as a string, or as a float if it is a measurement") \
            from None
    except RecursionError:
        raise _too_deep(text, where) from None
    except json.JSONDecodeError as exc:
        raise LineProblem(f"{where}:{exc.colno}: not valid JSON ({exc.msg})", "correct "
                          "the record") from None
    try:
        _check_values(value)
    except _Deep:
        raise _too_deep(text, where) from None
    except UnicodeEncodeError:
        raise LineProblem(f"{where}:{_column_of_surrogate(text)}: a string holds a lone "
                          "surrogate escape (\\ud800-\\udfff without its pair), which is not "
                          "text", "remove it, or write the character it was meant to be") \
            from None
    return value


def scan(path: Path, limits: Limits, key: str, json_lines: bool = True) -> list[LineProblem]:
    """Every problem of a JSON-lines file (`json_lines=False`: of a text file such as CSV,
    whose lines must be UTF-8), up to the first overlong line, which ends the scan. DataError
    first when the file is larger than `limits.file_bytes`."""
    check_file_size(path, limits, key)
    problems = []
    try:
        for number, raw in lines(path, limits):
            if not json_lines:
                _check_utf8(raw, path, number, problems)
                continue
            if not raw.strip():
                continue
            try:
                value = parse_line(raw, path, number)
            except LineProblem as exc:
                problems.append(exc)
                continue
            if not isinstance(value, dict):
                problems.append(LineProblem(f"{path}:{number}: a record must be a JSON "
                                            f"object, found {type(value).__name__}",
                                            "correct the record"))
    except LineProblem as exc:
        problems.append(exc)
    return problems


def _check_utf8(raw: bytes, path: Path, number: int, problems: list[LineProblem]) -> None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(_not_utf8(raw, exc, f"{path}:{number}"))


def _not_utf8(raw: bytes, exc: UnicodeDecodeError, where: str) -> LineProblem:
    column = len(raw[: exc.start].decode("utf-8", errors="replace")) + 1
    return LineProblem(f"{where}:{column}: not UTF-8 text (byte 0x{raw[exc.start]:02x})",
                       "save the file as UTF-8")


def read_text_file(path: Path, limits: Limits, key: str) -> str:
    """A small text file (prompt template, system prompt, chat template): at most
    `limits.file_bytes`, UTF-8, with a located error otherwise."""
    check_file_size(path, limits, key)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        start = raw.rfind(b"\n", 0, exc.start) + 1
        problem = _not_utf8(raw[start:], UnicodeDecodeError(
            exc.encoding, raw[start:], exc.start - start, exc.end - start, exc.reason),
            f"{path}:{line}")
        raise DataError(f"{problem} ({key})\nfix: {problem.fix}") from None


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > 20:  # never converted: Python refuses over 4300 digits, and time grows with size
        raise _HugeInt(text)
    value = int(text)
    if not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise _HugeInt(text)
    return value


def _check_values(value: Any) -> None:
    """Depth and text of every value, without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError
        elif isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise _Deep
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def _too_deep(text: str, where: str) -> LineProblem:
    return LineProblem(f"{where}:{_column_past_depth(text)}: arrays/objects nested deeper "
                       f"than {MAX_DEPTH} levels", "flatten the record")


def _outside_strings(text: str) -> Iterator[tuple[int, str]]:
    """(index, char) of the JSON text's characters that are not inside a string literal (nor
    its quotes)."""
    in_string, escaped = False, False
    for index, char in enumerate(text):
        if in_string:
            escaped = not escaped and char == "\\"
            in_string = escaped or char != '"'
        elif char == '"':
            in_string = True
        else:
            yield index, char


def _column_past_depth(text: str) -> int:
    """1-based column of the bracket that opens level MAX_DEPTH + 1 (outside strings)."""
    depth = 0
    for index, char in _outside_strings(text):
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return index + 1
        elif char in "]}":
            depth -= 1
    return 1


_NUMBER_END = re.compile(r"[\s,\]}]|$")


def _column_of_number(text: str, number: str) -> int:
    """1-based column of `number` written as a JSON number (outside strings)."""
    for index, _ in _outside_strings(text):
        if text.startswith(number, index) and _NUMBER_END.match(text, index + len(number)) \
                and (index == 0 or text[index - 1] in " \t:,["):
            return index + 1
    return 1


_LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _column_of_surrogate(text: str) -> int:
    match = _LONE_SURROGATE.search(text)
    return match.start() + 1 if match else 1


def _shorten(number: str) -> str:
    return number if len(number) <= 30 else f"{number[:12]}...{number[-6:]} " \
        f"({len(number.lstrip('-'))} digits)"
