"""Hostile data files: size caps per line and per file (with their recipe override), a nesting
limit, and every decode problem at file:line:column with a fix; never a traceback, never an
unbounded read."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import pytest

from lora_rl.config.validate import validate_recipe
from lora_rl.data.bounded import DEFAULT_LIMITS, MAX_DEPTH, Limits, scan
from lora_rl.data.files import first_record, load_records
from lora_rl.data.jsonl import DataError
from lora_rl.data.specs import data_specs

REPO = Path(__file__).resolve().parents[2]
GOOD = '{"input": "1+1=", "output": "2"}\n'
KEY = "data.train.data_path"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(path: Path, limits: Limits = DEFAULT_LIMITS) -> str:
    with pytest.raises(DataError) as err:
        load_records(path, KEY, limits=limits)
    return str(err.value)


def test_a_5mb_line_is_refused_quickly_without_reading_it(workdir):
    path = workdir / "d.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        handle.write(GOOD)
        handle.write('{"input": "' + "x" * 5_000_000 + '", "output": "y"}\n')
        handle.write(GOOD * 1000)
    tracemalloc.start()
    start = time.perf_counter()
    text = _refused(path)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert text.splitlines()[0] == (f"{path}:2: line longer than data.max_line_bytes "
                                    "(1048576 bytes)")
    assert "fix: shorten or split that record, or raise data.max_line_bytes" in text
    assert elapsed < 2.0
    assert peak < 4 * 1024 * 1024, peak  # about one line cap of reading, not the 5 MB line


def test_validate_reads_only_the_cap_of_an_overlong_first_line(workdir):
    path = workdir / "d.jsonl"
    path.write_text('{"input": "' + "x" * 5_000_000 + '"}\n', encoding="utf-8")
    tracemalloc.start()
    problem = first_record(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert problem.startswith(f"{path}:1: line longer than data.max_line_bytes")
    assert peak < 4 * 1024 * 1024, peak
    assert first_record(path, Limits(file_bytes=1000)).startswith(
        f"{path}: {path.stat().st_size} bytes, more than data.max_file_bytes (1000)")


def test_line_and_file_caps_are_recipe_keys(workdir):
    path = workdir / "d.jsonl"
    path.write_text(GOOD + '{"input": "' + "x" * 3000 + '", "output": "y"}\n', encoding="utf-8")
    assert [str(p) for p in scan(path, Limits(line_bytes=1000), KEY)] == [
        f"{path}:2: line longer than data.max_line_bytes (1000 bytes)"]
    assert scan(path, Limits(line_bytes=4000), KEY) == []
    text = _refused(path, Limits(file_bytes=100))
    assert text == (f"{path}: {path.stat().st_size} bytes, more than data.max_file_bytes (100) "
                    f"({KEY})\nfix: split the file, or raise data.max_file_bytes in the recipe "
                    "if this machine has the memory")
    recipe = workdir / "r.yaml"
    recipe.write_text(f"defaults: {REPO}/recipes/sft-tiny-dtensor-lora.yaml\n"
                      "data:\n  max_line_bytes: 4000\n  max_file_bytes: 100000\n"
                      "  train: {data_path: d.jsonl}\n", encoding="utf-8")
    result = validate_recipe(recipe)
    assert result.ok, [d.message for d in result.errors]
    limits = data_specs(result.config.data, "sft", "train")[0].limits
    assert limits == Limits(4000, 100000)
    assert load_records(path, KEY, limits=limits)[1].line == 2


def test_a_line_exactly_at_the_cap_is_read(workdir):
    path = workdir / "d.jsonl"
    line = '{"input": "' + "x" * 50 + '", "output": "y"}'
    path.write_text(line + "\n" + line, encoding="utf-8")  # the last line has no newline
    assert scan(path, Limits(line_bytes=len(line)), KEY) == []
    assert len(scan(path, Limits(line_bytes=len(line) - 1), KEY)) == 1


def test_a_100k_deep_array_is_a_located_error_not_a_recursion_traceback(workdir):
    path = workdir / "d.jsonl"
    prefix = '{"input": '
    path.write_text(GOOD + prefix + "[" * 100_000 + "]" * 100_000 + ', "output": "y"}\n',
                    encoding="utf-8")
    text = _refused(path)
    # `{` is level 1, so the bracket that opens level MAX_DEPTH + 1 is the MAX_DEPTH-th `[`
    column = len(prefix) + MAX_DEPTH
    assert text.splitlines()[0] == (f"{path}:2:{column}: arrays/objects nested deeper than "
                                    f"{MAX_DEPTH} levels")
    assert text.splitlines()[-1] == "fix: flatten the record"
    assert "Recursion" not in text


def test_nesting_just_past_the_limit_is_refused_too(workdir):
    path = workdir / "d.jsonl"
    path.write_text('{"input": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}\n", encoding="utf-8")
    assert f"{path}:1:{11 + MAX_DEPTH - 1}: arrays/objects nested deeper" in _refused(path)
    path.write_text('{"input": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}\n",
                    encoding="utf-8")
    assert scan(path, Limits(), KEY) == []


def test_a_lone_surrogate_in_a_prompt_is_located(workdir):
    path = workdir / "d.jsonl"
    line = '{"input": "caf\\u00e9 \\ud800 x", "output": "y"}'
    path.write_text(GOOD + line + "\n", encoding="utf-8")
    text = _refused(path)
    column = line.index("\\ud800") + 1
    assert text.splitlines()[0] == (f"{path}:2:{column}: a string holds a lone surrogate "
                                    "escape (\\ud800-\\udfff without its pair), which is not text")
    assert text.splitlines()[-1].startswith("fix: remove it")
    path.write_text('{"input": "\\ud83d\\ude80 ok", "output": "y"}\n', encoding="utf-8")
    assert load_records(path, KEY)[0].fields["input"] == "\U0001f680 ok"


def test_non_utf8_bytes_are_located_by_line_and_character_column(workdir):
    path = workdir / "d.jsonl"
    bad = '{"input": "héllo '.encode() + b"\xff" + b'", "output": "y"}\n'
    path.write_bytes(GOOD.encode() * 2 + bad)
    text = _refused(path)
    column = len('{"input": "héllo ') + 1  # characters, not bytes (é is two bytes)
    assert text.splitlines()[0] == f"{path}:3:{column}: not UTF-8 text (byte 0xff)"
    assert text.splitlines()[-1] == "fix: save the file as UTF-8"


@pytest.mark.parametrize(("number", "shown"), [
    ("9" * 5000, "999999999999...999999 (5000 digits)"),
    (str(2 ** 64), str(2 ** 64)),
    (str(-(2 ** 63) - 1), str(-(2 ** 63) - 1)),
])
def test_an_out_of_range_integer_is_located(workdir, number: str, shown: str):
    path = workdir / "d.jsonl"
    line = '{"input": "1234", "output": "y", "n": ' + number + "}"
    path.write_text(GOOD + line + "\n", encoding="utf-8")
    text = _refused(path)
    column = line.index(number, len('{"input": "1234"')) + 1
    assert text.splitlines()[0] == (f"{path}:2:{column}: integer {shown} is out of range "
                                    "(64-bit integers only)")
    assert "fix: write it as a string" in text


def test_64_bit_integers_are_fine(workdir):
    path = workdir / "d.jsonl"
    path.write_text(json.dumps({"input": "a", "output": "b", "n": 2 ** 63 - 1,
                                "m": -(2 ** 63)}) + "\n", encoding="utf-8")
    assert load_records(path, KEY)[0].fields["n"] == 2 ** 63 - 1


def test_every_problem_is_listed_with_one_fix_line_each_kind(workdir):
    path = workdir / "d.jsonl"
    path.write_bytes(b'{oops\n[1]\n{"a": "\xff"}\n' + GOOD.encode())
    lines = _refused(path).splitlines()
    assert lines[0] == f"{path}:1:2: not valid JSON (Expecting property name enclosed in " \
                       "double quotes)"
    assert lines[1] == f"{path}:2: a record must be a JSON object, found list"
    assert lines[2] == f"{path}:3:8: not UTF-8 text (byte 0xff)"
    assert lines[3] == "fix: correct the record; save the file as UTF-8"


def test_dev_zero_is_refused_as_not_a_regular_file(workdir):
    start = time.perf_counter()
    with pytest.raises(DataError, match="not a regular file or directory"):
        load_records(Path("/dev/zero"), KEY)
    assert first_record(Path("/dev/zero")) is None
    (workdir / "zero.jsonl").symlink_to("/dev/zero")
    with pytest.raises(DataError, match="not a regular file or directory"):
        load_records(workdir / "zero.jsonl", KEY)
    assert first_record(workdir / "zero.jsonl") is None
    recipe = workdir / "r.yaml"
    recipe.write_text(f"defaults: {REPO}/recipes/sft-tiny-dtensor-lora.yaml\n"
                      "data:\n  train: {data_path: zero.jsonl}\n", encoding="utf-8")
    assert [d.rule for d in validate_recipe(recipe).errors] == ["LR511"]
    assert time.perf_counter() - start < 5.0


def test_csv_lines_are_capped_and_checked_for_utf8(workdir):
    path = workdir / "d.csv"
    path.write_bytes("input,output\n1+1=,2\ncafé,".encode() + b"\xfe\n")
    assert _refused(path).splitlines() == [f"{path}:3:6: not UTF-8 text (byte 0xfe)",
                                           "fix: save the file as UTF-8"]
    path.write_text("input,output\n" + "x" * 2000 + ",y\n", encoding="utf-8")
    assert _refused(path, Limits(line_bytes=1000)).splitlines()[0] == (
        f"{path}:2: line longer than data.max_line_bytes (1000 bytes)")


def test_prompt_and_system_prompt_files_are_capped_and_located(workdir):
    from lora_rl.data.samples import Reader
    from lora_rl.data.specs import DataSpec

    write = workdir / "d.jsonl"
    write.write_text(GOOD, encoding="utf-8")
    (workdir / "prompt.txt").write_bytes("Question:\nré {} ".encode() + b"\xff\n")
    spec = DataSpec(path=write, kind="plain", where=KEY, prompt_file="prompt.txt")
    with pytest.raises(DataError) as err:
        Reader.for_spec(spec, "sft")
    assert str(err.value) == ("prompt.txt:2:7: not UTF-8 text (byte 0xff) (prompt_file)\n"
                              "fix: save the file as UTF-8")
    (workdir / "system.txt").write_text("s" * 500, encoding="utf-8")
    spec = DataSpec(path=write, kind="plain", where=KEY, system_prompt_file="system.txt",
                    limits=Limits(file_bytes=100))
    with pytest.raises(DataError, match=r"system.txt: 500 bytes, more than "
                                        r"data.max_file_bytes \(100\)"):
        Reader.for_spec(spec, "sft")
