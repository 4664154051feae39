"""lora-rl: validated, declarative LoRA fine-tuning with SFT, DPO and GRPO.

The Python API mirrors the CLI (docs/python-api.md)::

    import lora_rl

    report = lora_rl.validate("recipes/sft-tiny-dtensor-lora.yaml", ["sft.max_num_steps=20"])
    if report.ok:
        lora_rl.run("recipes/sft-tiny-dtensor-lora.yaml", ["sft.max_num_steps=20"])

Importing lora_rl loads nothing else: each function imports what it needs when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import TYPE_CHECKING

from lora_rl.errors import LoraRlError

if TYPE_CHECKING:
    from lora_rl.config.validate import ValidationResult

__version__ = "0.1.0"

__all__ = ["RecipeInvalidError", "__version__", "run", "validate"]


class RecipeInvalidError(LoraRlError, ValueError):
    """`run` was given a recipe with errors; `report` holds every diagnostic."""

    def __init__(self, report: ValidationResult) -> None:
        self.report = report
        lines = [f"{d.location.file}:{d.location.line}:{d.location.column}: {d.rule} {d.message}"
                 if d.location else f"{d.rule} {d.message}" for d in report.errors]
        super().__init__("the recipe has errors:\n" + "\n".join(lines))


def validate(path: str | PathLike, overrides: Sequence[str] = (),
             model_dir: str | PathLike | None = None) -> ValidationResult:
    """What `lora-rl validate` checks, as a report: `.ok`, `.errors`, `.warnings`,
    `.diagnostics` (rule id, message, fix, file:line:column) and the typed `.config`."""
    from pathlib import Path

    from lora_rl.config.validate import validate_recipe

    return validate_recipe(Path(path), list(overrides),
                           Path(model_dir) if model_dir is not None else None)


def run(path: str | PathLike, overrides: Sequence[str] = (), *, force: bool = False) -> int:
    """What `lora-rl run` does: validate, check the output paths, train (resuming an earlier
    run in the same checkpoint_dir). Returns the exit code (0: finished); raises
    RecipeInvalidError before anything runs when the recipe has errors."""
    from pathlib import Path

    from lora_rl.config.validate import validate_for_run
    from lora_rl.launcher import check_output_paths, launch

    report = validate_for_run(Path(path), list(overrides))
    if report.config is None or report.errors:
        raise RecipeInvalidError(report)
    check_output_paths(report.config, force)
    return launch(report.config)
