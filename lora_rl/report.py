"""Diagnostics out: compiler-style text (rich), JSON, SARIF 2.1.0 and GitHub workflow commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lora_rl import __version__
from lora_rl.config.diagnostics import USAGE_RULES, Diagnostic

if TYPE_CHECKING:
    from rich.console import Console

    from lora_rl.config.validate import ValidationResult

FORMATS = ("text", "json", "sarif", "github")
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _where(d: Diagnostic, fallback_file: str) -> str:
    return str(d.location) if d.location else f"{fallback_file}"


Segment = tuple[str, str | None]
"""Text and its rich style (None: unstyled)."""


def _text_lines(results: Sequence[ValidationResult], strict: bool) -> list[list[Segment]]:
    """The text report: one line per diagnostic, its note and fix, and a summary per file."""
    lines: list[list[Segment]] = []
    for result in results:
        for d in result.diagnostics:
            color = "red" if d.severity == "error" else "yellow"
            lines.append([(_where(d, result.file), "bold"), (": ", None),
                          (f"{d.severity} {d.rule}", f"bold {color}"), (f": {d.message}", None)])
            if d.location and d.location.via:
                lines.append([(f"  note: {d.location.via}", "dim")])
            if d.fix:
                lines.append([("  ", None), ("fix:", "green"), (f" {d.fix}", None)])
        n_err, n_warn = len(result.errors), len(result.warnings)
        if any(d.rule in USAGE_RULES for d in result.diagnostics):
            verdict = [("not validated", "red"),
                       (" (the file or an override could not be used)", None)]
        elif n_err or (strict and result.recipe_warnings):
            verdict = [("invalid", "red"), (f" ({n_err} error(s), {n_warn} warning(s))", None)]
        else:
            verdict = [("valid", "green"), (f" ({n_warn} warning(s))" if n_warn else "", None)]
        lines.append([(f"{result.file}: ", None), *verdict])
    return lines


def _plain(line: list[Segment]) -> str:
    return "".join(text for text, _ in line)


def print_text(results: Sequence[ValidationResult], console: Console, strict: bool) -> None:
    """The text report, one compiler-style line per diagnostic, through `console`. The lines
    are rich Text, not markup: a message is shown as it is (markup escaping doubled a trailing
    backslash)."""
    from rich.text import Text

    for line in _text_lines(results, strict):
        console.print(Text.assemble(*((text, style or "") for text, style in line)),
                      highlight=False, soft_wrap=True)


def write_text(results: Sequence[ValidationResult], strict: bool, stderr: bool = False) -> None:
    """The text report on stdout (or stderr). Where rich would write it unstyled anyway (not a
    terminal, see `cli_output.plain_stream`) and no line holds a character rich rewrites (tabs,
    control characters), the lines are written as they are: the same bytes, without importing
    rich (~0.03 s of `validate`'s start-up)."""
    from lora_rl.cli_output import console, plain_stream, unchanged_by_rich

    lines = [_plain(line) for line in _text_lines(results, strict)]
    if plain_stream(stderr) and all(unchanged_by_rich(line) for line in lines):
        stream = sys.stderr if stderr else sys.stdout
        stream.write("".join(f"{line}\n" for line in lines))
        stream.flush()
        return
    print_text(results, console(stderr), strict)


def _as_dict(d: Diagnostic) -> dict[str, Any]:
    loc = d.location
    return {
        "rule": d.rule, "severity": d.severity, "message": d.message, "path": d.dotted_path,
        "file": loc.file if loc else None, "line": loc.line if loc else None,
        "column": loc.column if loc else None, "via": loc.via if loc else None, "fix": d.fix,
    }


def to_json(results: Sequence[ValidationResult], strict: bool) -> str:
    return json.dumps({
        "version": __version__,
        "results": [{
            "file": r.file,
            "valid": not r.errors and not (strict and r.recipe_warnings),
            "diagnostics": [_as_dict(d) for d in r.diagnostics],
        } for r in results],
    }, indent=2)


def _sarif_result(d: Diagnostic, fallback_file: str) -> dict[str, Any]:
    loc = d.location
    file = loc.file if loc and not loc.file.startswith("<") else fallback_file
    region = {"startLine": loc.line, "startColumn": loc.column} if loc and file == loc.file \
        else {"startLine": 1, "startColumn": 1}
    text = d.message + (f" Fix: {d.fix}" if d.fix else "")
    if loc and loc.via:
        text += f" ({loc.via})"
    return {
        "ruleId": d.rule,
        "level": d.severity,
        "message": {"text": text},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": file},
                                            "region": region}}],
    }


def to_sarif(results: Sequence[ValidationResult]) -> str:
    from lora_rl.config.catalogue import all_rules
    from lora_rl.docs_links import docs_base, rule_help_uri

    rules = [{"id": rid, "shortDescription": {"text": title}, "helpUri": rule_help_uri(rid)}
             for rid, (title, _) in sorted(all_rules().items())]
    return json.dumps({
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "lora-rl", "version": __version__,
                                "informationUri": docs_base(),
                                "rules": rules}},
            "results": [_sarif_result(d, r.file) for r in results for d in r.diagnostics],
        }],
    }, indent=2)


def _escape_github(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def to_github(results: Sequence[ValidationResult]) -> str:
    lines = []
    for r in results:
        for d in r.diagnostics:
            loc = d.location
            in_file = loc is not None and not loc.file.startswith("<")
            props = [f"file={_escape_github(loc.file if in_file else r.file, True)}"]
            if in_file:
                props += [f"line={loc.line}", f"col={loc.column}"]
            props.append(f"title={_escape_github(d.rule, True)}")
            text = d.message + (f" Fix: {d.fix}" if d.fix else "")
            lines.append(f"::{d.severity} {','.join(props)}::{_escape_github(text)}")
    return "\n".join(lines)
