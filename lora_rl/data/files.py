"""Load a local data set with the Hugging Face `datasets` library, and turn its failures into one
message that names the file (and, for JSON lines, the line) instead of a traceback.

Formats: .jsonl / .json, .parquet, .arrow, .csv files and `save_to_disk` directories. Only
regular files and directories are read: a FIFO or a device would block or stream forever.
Files are capped in size and JSON-lines files are checked line by line first (`bounded`), so
an overlong line, deep nesting or bad text is a file:line:column error, not a traceback or an
out-of-memory kill.
"""

from __future__ import annotations

import stat
from pathlib import Path

from lora_rl.data.bounded import (
    DEFAULT_LIMITS,
    Limits,
    LineProblem,
    check_file_size,
    lines,
    parse_line,
    scan,
)
from lora_rl.data.jsonl import DataError, Record

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow",
            ".csv": "csv"}
MAX_SHOWN = 10


def check_path(path: Path, key: str, data: bool = True) -> None:
    """A regular file or directory (a data set), or just a regular file (`data=False`: a
    prompt or template file); else DataError naming the recipe key."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        what = "data file" if data else "file"
        raise DataError(f"{path}: no such {what} ({key}; paths are relative to the working "
                        "directory)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc}) ({key})") from None
    if not (stat.S_ISREG(mode) or (data and stat.S_ISDIR(mode))):
        raise DataError(f"{path}: not a regular file{' or directory' if data else ''} ({key}); "
                        "lora-rl reads only files and `save_to_disk` directories, never pipes "
                        "or devices")
    if data and stat.S_ISREG(mode) and path.suffix.lower() not in BUILDERS:
        raise DataError(f"{path}: unknown data format '{path.suffix}' ({key})\nfix: use "
                        f"{', '.join(BUILDERS)} or a `save_to_disk` directory")


def _quiet_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("reading data needs the Hugging Face `datasets` package\nfix: pip "
                        "install 'lora-rl[train]' (or pip install datasets)") from None

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    return datasets


def jsonl_problems(path: Path, limits: Limits = DEFAULT_LIMITS, key: str = "data") -> str:
    """The DataError text for the lines of a JSON-lines file that are not JSON objects
    (file:line:column each, one fix line), or "" when every line is one."""
    return _report(scan(path, limits, key))


def _report(problems: list[LineProblem]) -> str:
    if not problems:
        return ""
    fixes = dict.fromkeys(problem.fix for problem in problems)
    return summarise([str(problem) for problem in problems], "fix: " + "; ".join(fixes))



def _line_numbers(path: Path, count: int) -> list[int]:
    """Line of each record of a JSON-lines file (`datasets` skips blank lines)."""
    if path.suffix.lower() != ".jsonl":
        return list(range(1, count + 1))
    with path.open(encoding="utf-8") as handle:
        numbers = [n for n, raw in enumerate(handle, start=1) if raw.strip()]
    return numbers if len(numbers) == count else list(range(1, count + 1))


def _load(path: Path, split: str):
    datasets = _quiet_datasets()
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{path}: no split '{split}' (has: {', '.join(loaded)})\nfix: "
                                "set the data block's `split`")
            loaded = loaded[split]
        return loaded
    builder = BUILDERS[path.suffix.lower()]
    options = {"features": _csv_text_columns(path, datasets), "keep_default_na": False} \
        if builder == "csv" else {}
    return datasets.load_dataset(builder, data_files=str(path), split="train", **options)


def _csv_text_columns(path: Path, datasets):
    """CSV holds text: every column a string, so "07" stays "07" (type inference would make it
    the integer 7). The header names the columns."""
    import csv

    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    return datasets.Features({name: datasets.Value("string") for name in header})


def load_records(path: Path, key: str, split: str = "train",
                 limits: Limits = DEFAULT_LIMITS) -> list[Record]:
    """Every record of the data set at `path`. Raises DataError with file:line (and column
    where one applies)."""
    check_path(path, key)
    if path.is_file():
        check_file_size(path, limits, key)
        if path.suffix.lower() in (".jsonl", ".csv"):
            problems = _report(scan(path, limits, key, json_lines=path.suffix.lower() ==
                                    ".jsonl"))
            if problems:
                raise DataError(problems)
    try:
        table = _load(path, split)
    except DataError:
        raise
    except StopIteration:  # `datasets`' answer to an empty JSON file
        table = None
    except Exception as exc:  # noqa: BLE001 - pyarrow/datasets raise many types for bad files
        if not _blank(path):
            raise DataError(_explain(path, exc, limits)) from None
        table = None
    if table is None or len(table) == 0:
        raise DataError(f"{path}: the data set is empty (no records)\nfix: add records, or "
                        f"point {key} at the right file")
    rows = table.to_list()
    shown = str(path)
    return [Record(shown, line, row)
            for line, row in zip(_line_numbers(path, len(rows)), rows, strict=True)]


def _blank(path: Path) -> bool:
    return path.is_file() and not path.read_bytes().strip()


def _explain(path: Path, exc: Exception, limits: Limits) -> str:
    """Why `datasets` refused a file: file:line for JSON lines, else its own message."""
    if path.suffix.lower() in (".jsonl", ".json") and path.is_file():
        if path.suffix.lower() == ".json":  # one JSON document may be a single long line
            limits = Limits(line_bytes=limits.file_bytes, file_bytes=limits.file_bytes)
        problems = scan(path, limits, "data")
        # A JSON array file is not lines: many "line" problems would mislead.
        if problems and not (path.suffix.lower() == ".json" and len(problems) > MAX_SHOWN):
            return _report(problems)
    cause = exc.__cause__ or exc
    text = str(cause).strip()
    return summarise([f"{path}: cannot be read as a data set ({type(cause).__name__}: "
                      f"{text.splitlines()[0] if text else ''})"], "fix: correct those records")


def summarise(problems: list[str], fix: str) -> str:
    more = f"\n... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    return "\n".join(problems[:MAX_SHOWN]) + more + f"\n{fix}"


def first_record(path: Path, limits: Limits = DEFAULT_LIMITS) -> dict | str | None:
    """The first record of a JSON-lines file without loading the data set (for `validate`):
    a dict, an error text (file:line[:column]), or None when the format is not JSON lines or
    the file is empty. Reads at most `limits.line_bytes` of each line."""
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return None
    try:
        check_file_size(path, limits, "data")
    except DataError as exc:
        return str(exc).split("\n")[0]
    try:
        for number, raw in lines(path, limits):
            if not raw.strip():
                continue
            value = parse_line(raw, path, number)
            if not isinstance(value, dict):
                return f"{path}:{number}: a record must be a JSON object"
            return value
    except LineProblem as exc:
        return f"{exc} ({exc.fix})"
    return None
