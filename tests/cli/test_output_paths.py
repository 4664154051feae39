"""Output directories are checked before anything loads: a file in the way, a directory that
cannot be written, the working directory or a parent of it. Each ends in one line naming the
path and the fix (exit 2), never a traceback; `--force` replaces only an earlier export."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_rl.cli import app
from lora_rl.output_paths import OutputPathError, check_output_dir, check_replaceable

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "recipes/sft-tiny-dtensor-lora.yaml")


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "file").write_text("x")
    monkeypatch.chdir(work)
    return work


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize(("path", "expected"), [
    ("file", "is a file, not a directory"),
    ("file/sub", "is a file, so"),
    (".", "is the working directory"),
    ("..", "a parent of the working directory"),
    ("/proc/lora-rl-out", "cannot write in /proc "),
])
def test_unusable_output_dirs_are_named_with_the_fix(cwd, path, expected):
    with pytest.raises(OutputPathError, match=expected) as info:
        check_output_dir(path, "logger.log_dir")
    assert f"logger.log_dir = {path}" in str(info.value)


def test_a_new_or_existing_directory_is_fine_and_leaves_no_probe(cwd):
    (cwd / "logs").mkdir()
    assert check_output_dir("logs/a/b", "logger.log_dir") == cwd / "logs/a/b"
    assert check_output_dir("logs", "logger.log_dir") == cwd / "logs"
    assert list((cwd / "logs").iterdir()) == []
    assert not (cwd / "logs/a").exists()


def test_force_replaces_only_an_earlier_output(cwd):
    marked, empty, other = cwd / "marked", cwd / "empty", cwd / "other"
    for folder in (marked, empty, other):
        folder.mkdir()
    (marked / "stamp.json").write_text("{}")
    (other / "notes.txt").write_text("mine")
    check_replaceable(marked, "stamp.json", "--out")
    check_replaceable(empty, "stamp.json", "--out")
    check_replaceable(cwd / "absent", "stamp.json", "--out")
    for target in (other, cwd / "file"):
        with pytest.raises(OutputPathError, match="--force only replaces those"):
            check_replaceable(target, "stamp.json", "--out")


@pytest.mark.parametrize("overrides", [
    ["checkpointing.checkpoint_dir=file/ck"],
    ["checkpointing.checkpoint_dir=file"],
    ["logger.log_dir=file/logs"],
    ["logger.log_dir=."],
    ["checkpointing.checkpoint_dir=.."],
])
def test_run_refuses_before_loading_anything(cwd, overrides):
    done = _invoke("run", RECIPE, *overrides, "logger.progress_bar=false")
    assert done.exit_code == 2, done.output
    assert overrides[0].split("=")[0] + " = " in done.output
    assert isinstance(done.exception, SystemExit), done.exception  # not a crash


@pytest.mark.parametrize(("out", "expected"), [
    (".", "is the working directory"),
    ("file", "is a file, not a directory"),
    ("mine", "is a directory that is not an earlier lora-rl output"),
])
def test_export_force_never_replaces_what_it_did_not_write(cwd, out, expected):
    (cwd / "mine").mkdir()
    (cwd / "mine/keep.txt").write_text("keep")
    # The checkpoint does not exist: --out is refused before the checkpoint is even read.
    done = _invoke("export", "--checkpoint", "nowhere", "--format", "peft", "--out", out,
                   "--force")
    assert done.exit_code == 2, done.output
    assert expected in " ".join(done.output.split())
    assert (cwd / "mine/keep.txt").read_text() == "keep" and (cwd / "file").is_file()


def test_init_model_under_a_file_is_refused(cwd):
    done = _invoke("init-model", "--out", "file/tiny")
    assert done.exit_code == 2
    assert "file, so" in " ".join(done.output.split())
    assert os.listdir(cwd) == ["file"]


def _one_error_line(done) -> str:
    assert done.exit_code == 2, done.output
    assert isinstance(done.exception, SystemExit), done.exception  # not a crash
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.output
    return lines[0]


def test_init_model_refuses_a_folder_it_did_not_build_and_rebuilds_its_own_with_force(
        tmp_path, monkeypatch):
    from lora_rl.tiny.model import TINY_STAMP

    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    line = _one_error_line(_invoke("init-model", "--out", "mine"))
    assert line == ("error: --out = mine exists and is not an earlier lora-rl output (no "
                    f"{TINY_STAMP} in it); choose another folder, or remove it yourself if it "
                    "should go")
    line = _one_error_line(_invoke("init-model", "--out", "mine", "--force"))
    assert "--out = mine is a directory that is not an earlier lora-rl output" in line
    assert "Choose another path" in line
    assert os.listdir(mine) == ["notes.txt"]

    (tmp_path / "empty").mkdir()  # an empty folder is filled
    assert _invoke("init-model", "--out", "empty").exit_code == 0
    built = tmp_path / "empty"
    assert (built / "config.json").is_file() and (built / TINY_STAMP).is_file()
    line = _one_error_line(_invoke("init-model", "--out", "empty"))
    assert line == ("error: --out = empty exists (an earlier lora-rl output); pass --force to "
                    "replace it, or choose another folder")
    (built / "stale.txt").write_text("from before")
    assert _invoke("init-model", "--out", "empty", "--force").exit_code == 0
    assert (built / "config.json").is_file() and not (built / "stale.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["empty", "mine"]  # no temporary directory left


def test_export_outside_the_working_directory_never_overwrites_without_force(cwd, tmp_path):
    from lora_rl.interop.export import EXPORT_STAMP

    earlier, mine, empty = tmp_path / "earlier", tmp_path / "mine", tmp_path / "empty"
    for folder in (earlier, mine, empty):
        folder.mkdir()
    (earlier / EXPORT_STAMP).write_text("{}")
    (mine / "keep.txt").write_text("keep")

    def export(out: Path, *force: str):
        # The checkpoint does not exist: --out is judged before the checkpoint is read.
        return _invoke("export", "--checkpoint", "nowhere", "--format", "peft", "--out",
                       str(out), *force)

    line = _one_error_line(export(earlier))
    assert line == (f"error: --out = {earlier} exists (an earlier lora-rl output); pass --force "
                    "to replace it, or choose another folder")
    line = _one_error_line(export(mine))
    assert line == (f"error: --out = {mine} exists and is not an earlier lora-rl output (no "
                    f"{EXPORT_STAMP} in it); choose another folder, or remove it yourself if it "
                    "should go")
    assert "--force only replaces those" in _one_error_line(export(mine, "--force"))
    assert (mine / "keep.txt").read_text() == "keep" and os.listdir(mine) == ["keep.txt"]
    for accepted in (export(earlier, "--force"), export(empty)):  # on to reading the checkpoint
        assert accepted.exit_code == 1 and "nowhere: no such checkpoint" in accepted.output
