"""Rules about code and files a recipe makes lora-rl trust (ids LR800-LR829).

LR800/LR801 (`defaults:` parents) are raised by the loader, see `parent_guard`.
"""

from __future__ import annotations

from collections.abc import Iterator

from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.rules import Finding, RuleContext, rule


def _reward_problem(cfg: RecipeConfig, severity: str) -> Iterator[Finding]:
    from lora_rl.config.sections import BUILTIN_REWARDS
    from lora_rl.reward_source import check_reference

    if cfg.grpo is None or cfg.env.reward in BUILTIN_REWARDS:
        return
    problem = check_reference(cfg.env.reward, cfg.env.reward_kwargs)
    if problem is not None and problem.severity == severity:
        yield Finding("env.reward", problem.message, problem.fix)


@rule("LR802", "error", "env.reward is not a function of yours with the reward signature")
def _reward_refused(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    yield from _reward_problem(cfg, "error")


@rule("LR803", "warning", "env.reward cannot be checked before the run imports it")
def _reward_unchecked(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    yield from _reward_problem(cfg, "warning")


def _pickle_files(ctx: RuleContext) -> list[str]:
    from pathlib import Path

    from lora_rl.model_source import pickle_only

    return [p.name for p in pickle_only(Path(ctx.model.source))] if ctx.model else []


@rule("LR804", "error", "The model's weights are pickle files only (safetensors required)")
def _pickle_weights(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    from lora_rl.model_source import conversion_command

    names = _pickle_files(ctx)
    if names and not cfg.policy.allow_pickle_weights:
        yield Finding("policy.model_name", f"{ctx.model.source} holds pickle weights only "
                      f"({', '.join(names[:3])}); lora-rl loads safetensors only, because "
                      "unpickling can run code",
                      f"convert once: {conversion_command(ctx.model.source)}; or, for a source "
                      "you trust, set policy.allow_pickle_weights: true")


@rule("LR805", "warning", "Pickle weights allowed: loaded with torch.load(weights_only=True)")
def _pickle_allowed(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    names = _pickle_files(ctx)
    if names and cfg.policy.allow_pickle_weights:
        yield Finding("policy.allow_pickle_weights", f"{ctx.model.source}'s weights "
                      f"({', '.join(names[:3])}) are pickle files; they are opened with "
                      "torch.load(weights_only=True), which refuses code but still parses a "
                      "file you have not checked", "convert them to safetensors and remove "
                      "allow_pickle_weights")
