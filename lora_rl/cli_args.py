"""Arguments every recipe-taking command shares: the recipe (a path or a catalogue name) and
its overrides, spelled the same everywhere (`--set a.b=v`, or positional `a.b=v` on `run`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lora_rl.cli_output import console, exit_code

if TYPE_CHECKING:
    from lora_rl.config.recipe import RecipeConfig

RecipeArg = Annotated[Path, typer.Argument(
    metavar="RECIPE", help="Recipe file, or a catalogue name (`lora-rl recipes ls`)")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", "-s", metavar="KEY=VALUE", help="Override a key: a.b.c=value, ++a.b=value, ~a.b")]


def resolve_recipe(arg: Path) -> Path:
    """`arg` itself when it is a file; else the catalogue recipe of that name, if there is one
    (`sft-tiny-dtensor-lora`); else `arg`, for `validate` to report as missing."""
    if arg.exists() or len(arg.parts) != 1:
        return arg
    from lora_rl.recipes_catalog import CatalogError, find_recipe

    try:
        entry = find_recipe(arg.name)
    except CatalogError:
        return arg
    console(stderr=True).print(f"using catalogue recipe {entry.name} ({entry.path})")
    return entry.path


def recipe_or_exit(recipe: Path, overrides: list[str] | None) -> RecipeConfig:
    """The validated recipe (its model resolved); on errors they are printed and the command
    exits with validate's code."""
    from lora_rl import report
    from lora_rl.config.validate import validate_for_run

    result = validate_for_run(resolve_recipe(recipe), overrides or [])
    if result.config is None or result.errors:
        report.print_text([result], console(stderr=True), strict=False)
        raise typer.Exit(exit_code([result], False))
    return result.config
