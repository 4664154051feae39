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
