"""`lora-rl run A.yaml B.yaml [KEY=VALUE...]`: several recipes, one job, one base model.

Each recipe is validated as `run` validates one, with the same overrides applied to all of
them; then the cross-recipe checks (`config.joint`: LR700-LR703) run; then every recipe's
output directories are checked and locked, and the adapters train in turns on one loaded base
(`algorithms.joint`)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import typer

from lora_rl.cli_args import resolve_recipe
from lora_rl.cli_output import EXIT_OK, EXIT_USAGE, console, exit_code, reported


def split_arguments(args: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Recipes and overrides from `run`'s positional arguments, in any order: an override has
    `=` (`a.b=1`, `++a.b=1`) or is a deletion `~a.b` (a `~` path to a recipe has a `/`)."""
    recipes, overrides = [], []
    for arg in args:
        if "=" in arg or (arg.startswith("~") and "/" not in arg):
            overrides.append(arg)
        else:
            recipes.append(Path(arg))
    return recipes, overrides


def adapter_names(recipes: Sequence[Path]) -> list[str]:
    """A short, distinct name per recipe (its file stem; `-2`, `-3` for repeats) that prefixes
    each adapter's output."""
    names: list[str] = []
    for recipe in recipes:
        name, n = recipe.stem, 1
        while name in names:
            n += 1
            name = f"{recipe.stem}-{n}"
        names.append(name)
    return names


def validate_joint(recipes: Sequence[Path], overrides: Sequence[str]):
    """Every recipe validated for a run, plus the cross-recipe checks."""
    from lora_rl.config.joint import check_joint
    from lora_rl.config.validate import validate_for_run

    results = [validate_for_run(recipe, overrides) for recipe in recipes]
    check_joint(results)
    return results


def run_joint_command(recipes: Sequence[Path], overrides: Sequence[str], force: bool,
                      dry_run: bool, fresh: bool) -> None:
    from lora_rl import report

    recipes = [resolve_recipe(r) for r in recipes]
    results = validate_joint(recipes, overrides)
    if any(r.diagnostics for r in results):
        report.print_text(results, console(stderr=True), strict=False)
    if any(r.config is None or r.errors for r in results):
        raise typer.Exit(exit_code(results, False))
    cfgs = [r.config for r in results]
    names = adapter_names(recipes)
    from lora_rl.launcher import OutputPathError, check_output_paths
    from lora_rl.run_plan import move_aside, plan_lines

    with reported(EXIT_USAGE, OutputPathError):
        for cfg in cfgs:
            check_output_paths(cfg, force)
    if dry_run:
        console().print(f"multi-adapter run: {len(cfgs)} adapters on one "
                        f"{cfgs[0].policy.model_name}, in turns ({', '.join(names)})")
        from lora_rl.config.joint import uses_vllm

        sampled = [name for name, cfg in zip(names, cfgs, strict=True) if uses_vllm(cfg)]
        if sampled:
            console().print(f"GRPO rollouts of {', '.join(sampled)} from one vLLM engine, a "
                            "LoRA slot each", highlight=False)
        for name, cfg in zip(names, cfgs, strict=True):
            for line in plan_lines(cfg, fresh):
                console().print(f"[{name}] {line}", highlight=False, markup=False)
        raise typer.Exit(EXIT_OK)
    if fresh:
        for name, cfg in zip(names, cfgs, strict=True):
            moved = move_aside(cfg)
            if moved is not None:
                console().print(f"[{name}] --fresh: earlier checkpoints moved to {moved}",
                                markup=False)
    from lora_rl.launcher import launch_joint
    from lora_rl.run_lock import RunLockError, hold_run_directories

    with reported(EXIT_USAGE, RunLockError), contextlib.ExitStack() as locks:
        for cfg in cfgs:
            locks.enter_context(hold_run_directories(cfg))
        code = launch_joint(cfgs, names)
    raise typer.Exit(code)
