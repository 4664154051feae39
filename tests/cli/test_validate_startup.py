"""`lora-rl validate`'s thin start-up path: what it imports, and its text report written
without rich when rich would not style it (the same bytes as through rich)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from lora_rl import report
from lora_rl.cli_output import plain_stream
from lora_rl.config.diagnostics import Diagnostic, Location
from lora_rl.config.validate import ValidationResult

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "sft-tiny-dtensor-lora.yaml"
HEAVY = ("torch", "transformers", "triton", "rich", "ruamel", "numpy", "safetensors")

TRICKY = [
    "plain message",
    "a [bold]markup-looking[/bold] value and a [link=x] and \\[escaped]",
    "trailing backslash \\",
    "emoji-like :warning: and :100: codes, `a:b:c`, {'x': [1, 2]}",
    "wide 中文 and combining é and emoji 🚀 characters",
    "ends with spaces   ",
    "a tab\there",
    "a newline\nhere",
    "a bell\x07 and \r carriage return",
]


def _result(message: str, line: int = 3, fix: str | None = "change it",
            via: str | None = None) -> ValidationResult:
    return ValidationResult(file="r.yaml", diagnostics=[
        Diagnostic("LR101", "error", message, ("a", "b"), Location("r.yaml", line, 5, via), fix),
        Diagnostic("LR901", "warning", message, (), None, None),
    ])


def _through_rich(results: list[ValidationResult], strict: bool = False) -> str:
    out = io.StringIO()
    report.print_text(results, Console(file=out, highlight=False, width=200, emoji=False),
                      strict)
    return out.getvalue()


@pytest.fixture
def unstyled_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("message", TRICKY)
def test_plain_report_is_byte_identical_to_rich(message: str, unstyled_env: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    results = [_result(message, via=f"via {message}", fix=f"fix {message}"),
               ValidationResult(file="ok [x].yaml")]
    assert plain_stream()  # pytest captures stdout: not a terminal
    report.write_text(results, strict=False)
    assert capsys.readouterr().out == _through_rich(results)
    report.write_text(results, strict=True)
    assert capsys.readouterr().out == _through_rich(results, strict=True)


def test_line_100_is_not_an_emoji(unstyled_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    """rich's emoji codes turned `r.yaml:100:5` into `r.yaml💯5`; neither path does now."""
    results = [_result("bad value", line=100)]
    report.write_text(results, strict=False)
    plain = capsys.readouterr().out
    assert plain.startswith("r.yaml:100:5: error LR101: bad value\n"), plain
    assert _through_rich(results) == plain
    with_tab = [_result("bad\tvalue", line=100)]  # goes through rich
    report.write_text(with_tab, strict=False)
    assert capsys.readouterr().out.startswith("r.yaml:100:5: error LR101: bad")


@pytest.mark.parametrize(("env", "plain"), [
    ({"FORCE_COLOR": "1"}, False), ({"FORCE_COLOR": ""}, True), ({"TTY_COMPATIBLE": "1"}, False),
    ({"TTY_COMPATIBLE": "0", "FORCE_COLOR": "1"}, True), ({}, True)])
def test_plain_only_where_rich_would_not_style(env: dict[str, str], plain: bool,
                                               unstyled_env: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert plain_stream() is plain
    assert Console(file=io.StringIO()).is_terminal is (not plain)


def test_forced_colour_still_styles(unstyled_env: None) -> None:
    env = {**os.environ, "FORCE_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-m", "lora_rl", "validate", str(RECIPE)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "\x1b[" in proc.stdout and "valid" in proc.stdout


def test_validate_imports_nothing_heavy() -> None:
    """Piped `validate` of the main recipe: no torch, transformers or rich (its report is
    written plain), and the console script's output."""
    code = ("import sys\nfrom lora_rl.cli import main\nsys.argv = ['lora-rl', 'validate', "
            f"{str(RECIPE.relative_to(ROOT))!r}]\ntry:\n    main()\nexcept SystemExit as exit:\n"
            "    code = exit.code\n"
            f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
            "print('exit', code, 'heavy', heavy)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)
    assert proc.stdout.splitlines() == [f"{RECIPE.relative_to(ROOT)}: valid", "exit 0 heavy []"], \
        proc.stdout + proc.stderr
