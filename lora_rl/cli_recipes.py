"""`lora-rl recipes ls | cp`: browse the shipped recipes and copy one to start from.

Registered in `lora_rl.cli` with `app.add_typer(recipes_app, name="recipes")`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lora_rl.cli_output import EXIT_INVALID, EXIT_USAGE, command_group, reported
from lora_rl.cli_output import console as _console

app = command_group("Shipped recipes: list them, copy one to edit.")





@app.command("ls")
def list_command(
    show_all: Annotated[bool, typer.Option("--all", help="Also list the shared parents in "
                                                         "base/")] = False,
) -> None:
    """List the recipes: algorithm, backend, model, devices and LoRA, as validated."""
    from rich.table import Table

    from lora_rl.recipes_catalog import CatalogError, list_recipes, recipes_dir, summarize

    with reported(EXIT_USAGE, CatalogError):
        entries = list_recipes(include_bases=show_all)
        root = recipes_dir()
    table = Table(title=f"recipes in {root}", title_justify="left")
    for column in ("name", "algorithm", "backend", "model", "devices", "lora"):
        table.add_column(column, no_wrap=True)
    summaries = [summarize(entry) for entry in entries]
    for s in summaries:
        name = s.name if not s.problems else f"{s.name} [red](invalid)[/red]"
        table.add_row(name, s.algorithm, s.backend, s.model, s.devices, s.lora)
    console = _console()
    console.print(table)
    console.print("devices = nodes x devices per node; copy one with "
                  "`lora-rl recipes cp NAME my.yaml`")
    if any(s.problems for s in summaries):
        raise typer.Exit(EXIT_INVALID)


@app.command("cp")
def copy_command(
    name: Annotated[str, typer.Argument(
        metavar="NAME", help="Recipe name, as `recipes ls` shows it")],
    dest: Annotated[Path, typer.Argument(
        metavar="DEST", help="Target file, or an existing directory")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file")] = False,
) -> None:
    """Copy a recipe, keeping its comments; its `defaults:` parents stay in the catalogue."""
    from lora_rl.recipes_catalog import CatalogError, copy_recipe

    try:
        with reported(EXIT_USAGE, CatalogError):
            target = copy_recipe(name, dest, force)
    except OSError as exc:
        _console(stderr=True).print(f"error: cannot write {dest}: {exc.strerror}")
        raise typer.Exit(EXIT_USAGE) from None
    _console().print(f"wrote {target}; check it with `lora-rl validate {target}`")
