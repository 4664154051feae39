"""`lora-rl preview RECIPE`: what training will see. Registered in `lora_rl.cli` with one line."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from lora_rl.cli_output import EXIT_INVALID
from lora_rl.cli_output import console as _console

MARK_OPEN, MARK_CLOSE = "⟦", "⟧"
"""Around trained text when the output is not a terminal (no colour to show it)."""


class PreviewFormat(str, Enum):
    text = "text"
    json = "json"


def preview(
    file: Annotated[Path, typer.Argument(help="Recipe file")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of training examples")] = 3,
    fmt: Annotated[PreviewFormat, typer.Option("--format", help="text (trained tokens "
                                               "highlighted) or json")] = PreviewFormat.text,
    set_overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a.b.c=value (repeatable)")] = None,
) -> None:
    """Show the first N training examples as the model sees them: chat template, BOS/EOS,
    truncation applied; the tokens that carry the loss are highlighted (text) or listed as
    `trained_text` (json)."""
    import json

    from lora_rl import report
    from lora_rl.config.validate import validate_recipe
    from lora_rl.data.jsonl import DataError
    from lora_rl.data.preview import preview as collect
    from lora_rl.model_source import ModelSourceError

    result = validate_recipe(file, set_overrides or [], resolve_embedded_model=True)
    if result.config is None or result.errors:
        report.print_text([result], _console(stderr=True), strict=False)
        raise typer.Exit(EXIT_INVALID)
    try:
        cfg = result.config
        shown = collect(cfg.policy, cfg.data, cfg.algorithm, n)
    except (DataError, ModelSourceError) as exc:
        _console(stderr=True).print(f"error: {exc}", markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    if fmt == PreviewFormat.json:
        print(json.dumps([{"text": s.text, "trained_text": s.trained_text} for s in shown],
                         indent=2, ensure_ascii=False))
        return
    _print_text(shown)


def _print_text(shown) -> None:
    from rich.text import Text

    console = _console()
    colour = console.is_terminal
    legend = "trained tokens in green" if colour else \
        f"trained tokens between {MARK_OPEN} and {MARK_CLOSE}"
    console.print(f"{len(shown)} example(s); {legend}", markup=False)
    for item in shown:
        console.print(Text(f"── {item.source} ──", style="dim"))
        line = Text()
        for text, trained in item.segments:
            if trained and colour:
                line.append(text, style="bold green")
            elif trained:
                line.append(f"{MARK_OPEN}{text}{MARK_CLOSE}")
            else:
                line.append(text)
        console.print(line)
