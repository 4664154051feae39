"""`lora-rl generate`, `chat` and `eval`: try a trained adapter with the recipe that trained it.

The recipe supplies the base model, tokenizer and prompt format; `--checkpoint` picks the adapter
(default: the latest good checkpoint in the recipe's checkpoint_dir).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from lora_rl.cli_args import RecipeArg, SetOption, recipe_or_exit
from lora_rl.cli_output import EXIT_INVALID, EXIT_USAGE, console, reported

CheckpointOption = Annotated[Path | None, typer.Option(
    "--checkpoint", "-c", metavar="DIR",
    help="step_N dir, a checkpoint_dir (its latest step) or an exported PEFT adapter; default: "
         "the recipe's checkpointing.checkpoint_dir")]
BaseOnlyOption = Annotated[bool, typer.Option(
    "--base-only", help="No adapter: the base model, for comparison")]
MaxNewOption = Annotated[int | None, typer.Option(
    "--max-new-tokens", "-n", min=1, help="Default: policy.generation.max_new_tokens, or 64")]
TemperatureOption = Annotated[float, typer.Option(
    "--temperature", "-t", min=0.0, help="0 = greedy (what validation measures)")]


def _policy(recipe: Path, overrides: list[str] | None, checkpoint: Path | None, base_only: bool):
    from lora_rl.interop.trained_policy import PolicyLoadError, load_trained_policy
    from lora_rl.model_source import ModelSourceError

    cfg = recipe_or_exit(recipe, overrides)
    with reported(EXIT_INVALID, PolicyLoadError, ModelSourceError):
        policy = load_trained_policy(cfg, checkpoint, adapter=not base_only)
    console(stderr=True).print(f"loaded {cfg.policy.model_name} with {policy.source}")
    return cfg, policy


DEFAULT_MAX_NEW_TOKENS = 64
"""For recipes without a generation section (SFT, DPO)."""


def _max_new_tokens(cfg, given: int | None) -> int:
    if given is not None:
        return given
    gen = cfg.policy.generation
    return gen.max_new_tokens if gen is not None else DEFAULT_MAX_NEW_TOKENS


def _rendered(policy, cfg, text: str) -> list[int]:
    from lora_rl.data.jsonl import DataError

    with reported(EXIT_INVALID, DataError):
        return policy.typed(cfg, text)


def generate(
    recipe: RecipeArg,
    prompts: Annotated[list[str] | None, typer.Argument(
        metavar="PROMPT...", help="Prompts (default: one per line on stdin)")] = None,
    checkpoint: CheckpointOption = None,
    base_only: BaseOnlyOption = False,
    max_new_tokens: MaxNewOption = None,
    temperature: TemperatureOption = 0.0,
    overrides: SetOption = None,
) -> None:
    """Answer prompts with a trained adapter, formatted exactly as in training."""
    texts = prompts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        console(stderr=True).print("error: no prompts (pass them as arguments or on stdin)")
        raise typer.Exit(EXIT_USAGE)
    cfg, policy = _policy(recipe, overrides, checkpoint, base_only)
    limit = _max_new_tokens(cfg, max_new_tokens)
    rendered = [_rendered(policy, cfg, text) for text in texts]
    for prompt, ids in zip(texts, policy.answer_ids(rendered, limit, temperature), strict=True):
        answer = policy.tokenizer.decode(ids, skip_special_tokens=True)
        print(answer if len(texts) == 1 else f"{prompt}\t{answer}", flush=True)


def chat(
    recipe: RecipeArg,
    checkpoint: CheckpointOption = None,
    base_only: BaseOnlyOption = False,
    max_new_tokens: MaxNewOption = None,
    temperature: TemperatureOption = 0.0,
    overrides: SetOption = None,
) -> None:
    """Type prompts, read streamed answers; an empty line or Ctrl-D ends."""
    from transformers import TextStreamer

    cfg, policy = _policy(recipe, overrides, checkpoint, base_only)
    limit = _max_new_tokens(cfg, max_new_tokens)
    streamer = TextStreamer(policy.tokenizer, skip_prompt=True, skip_special_tokens=True)
    while True:
        try:
            prompt = input("> ")
        except EOFError:
            break
        if not prompt.strip():
            break
        for _ in policy.answer_ids([_rendered(policy, cfg, prompt)], limit, temperature,
                                   streamer=streamer):
            pass


def evaluate(
    recipe: RecipeArg,
    checkpoint: CheckpointOption = None,
    base_only: BaseOnlyOption = False,
    overrides: SetOption = None,
) -> None:
    """Held-out accuracy of a trained adapter on the recipe's validation records (greedy exact
    match against the reference, as the run's val_accuracy)."""
    from lora_rl.interop.policy_eval import EvalError, held_out_accuracy

    cfg, policy = _policy(recipe, overrides, checkpoint, base_only)
    with reported(EXIT_INVALID, EvalError):
        accuracy, count = held_out_accuracy(cfg, policy)
    print(f"val_accuracy {accuracy:.4f} ({count} records)")


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(chat)
    app.command("eval")(evaluate)
