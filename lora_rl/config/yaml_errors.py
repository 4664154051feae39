"""PyYAML's syntax errors, said in recipe terms: the line and column of the cause, one message and
a fix.

PyYAML reports where its parser gave up, which is often a line below the mistake (`dim:16` is
read as text, so the error is the next line's `:`), in parser words ("expected <block end>, but
found '<block mapping start>'"). The usual causes in a recipe are few: a key with no space after
its colon, a line indented more or less than its siblings, a value holding ': ', an unclosed
bracket or quote. Each is recognised from the text around the parser's marks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

NO_SPACE_KEY = re.compile(r"^(?P<indent>\s*(?:- )?)(?P<key>[A-Za-z_][\w.-]*):"
                          r"(?P<value>[^\s:/][^#]*?)\s*(#.*)?$")
"""`dim:16`: a key and value with no space after the colon, read by YAML as one string."""

_KEY = re.compile(r"^(?P<indent>\s*)(?:- )?(?P<key>[^\s:#'\"][^:#]*?):(\s|$)")


@dataclass(frozen=True)
class SyntaxProblem:
    message: str
    line: int
    column: int
    """1-based."""
    fix: str


def explain(exc: yaml.MarkedYAMLError, text: str) -> SyntaxProblem | None:
    """The cause of a PyYAML error in `text`, or None when it is not one recognised here."""
    problem, context = exc.problem or "", exc.context or ""
    mark, start = exc.problem_mark, exc.context_mark
    if mark is None or "\t" in problem or "tab" in problem:
        return None
    lines = text.splitlines()
    if problem in ("mapping values are not allowed here", "could not find expected ':'") or \
            "expected <block end>" in problem:
        first = start.line if start is not None else max(mark.line - 2, 0)
        found = _no_space_key(lines, first, mark.line)
        if found is not None:
            return found
    if problem == "mapping values are not allowed here":
        return _stray_colon(lines, mark.line, mark.column)
    if "expected <block end>" in problem or problem == "did not find expected key":
        return _under_indented(lines, mark.line)
    if start is not None and context.startswith("while parsing a flow"):
        line = lines[start.line] if start.line < len(lines) else ""
        bracket = line[start.column] if start.column < len(line) else "["
        close = {"[": "]", "{": "}"}.get(bracket, "]")
        return SyntaxProblem(f"the '{bracket}' opened here is not closed", start.line + 1,
                             start.column + 1, f"close it with '{close}' (a flow list or "
                             "mapping written on several lines needs its commas and closing "
                             "bracket)")
    if start is not None and context == "while scanning a quoted scalar":
        return SyntaxProblem("the quote opened here is never closed", start.line + 1,
                             start.column + 1, "add the closing quote at the end of the value")
    return None


def _no_space_key(lines: list[str], first: int, last: int) -> SyntaxProblem | None:
    for index in range(max(first, 0), min(last, len(lines) - 1) + 1):
        match = NO_SPACE_KEY.match(lines[index])
        if match:
            key, value = match["key"], match["value"].strip()
            return SyntaxProblem(f"'{key}:{value}' has no space after the colon, so YAML reads "
                                 "it as text, not as a key", index + 1,
                                 len(match["indent"]) + len(key) + 1,
                                 f"add a space after the colon: `{key}: {value}`")
    return None


def _stray_colon(lines: list[str], line: int, column: int) -> SyntaxProblem:
    text = lines[line] if line < len(lines) else ""
    key = _KEY.match(text)
    if key is not None and key.end("key") < column:
        # `name: a: b`: the colon is inside a value
        value = text[key.end():].strip()
        return SyntaxProblem(f"the value of '{key['key']}' contains ': ', which YAML reads as "
                             "a second key on the same line", line + 1, column + 1,
                             f"quote the value: `{key['key']}: \"{value}\"`")
    indent = len(text) - len(text.lstrip(" "))
    above = _previous_key(lines, line)
    name = text.strip().split(":", 1)[0]
    if above is not None and indent > above[1]:
        return SyntaxProblem(f"'{name}:' is indented more than '{above[0]}:' above it, so YAML "
                             f"reads it as part of {above[0]}'s value", line + 1, indent + 1,
                             f"indent '{name}:' by {above[1]} spaces, like '{above[0]}:'")
    return SyntaxProblem(f"'{name}:' cannot start a key here", line + 1, indent + 1,
                         "check the indentation of this line and the one above it")


def _previous_key(lines: list[str], line: int) -> tuple[str, int] | None:
    for index in range(line - 1, -1, -1):
        match = _KEY.match(lines[index])
        if match:
            return match["key"].strip(), len(match["indent"])
        if lines[index].strip() and not lines[index].lstrip().startswith("#"):
            return None
    return None


def _under_indented(lines: list[str], line: int) -> SyntaxProblem:
    text = lines[line] if line < len(lines) else ""
    indent = len(text) - len(text.lstrip(" "))
    levels: list[int] = []
    for above in lines[:line]:
        if not above.strip() or above.lstrip().startswith("#"):
            continue
        level = len(above) - len(above.lstrip(" "))
        while levels and levels[-1] > level:
            levels.pop()
        if not levels or levels[-1] < level:
            levels.append(level)
    name = text.strip().split(":", 1)[0] or "this line"
    choices = " or ".join(str(level) for level in levels if level != indent) or "0"
    return SyntaxProblem(f"'{name}' is indented {indent} spaces, which matches none of the "
                         f"sections above it (their keys are at {choices})", line + 1,
                         indent + 1, f"indent '{name}' by {choices} spaces, like the keys it "
                         "belongs with")
