"""Rules about values that pass the schema but are very likely not what was meant (LR130-LR149).

Registered in the rule catalogue by the import at the bottom of `rules.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.rules import DT, LORA, PEFT, Finding, RuleContext, rule


@rule("LR130", "warning", "LoRA rank above the model's hidden size")
def _rank_above_hidden(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    lora = cfg.policy.active_lora
    if ctx.model is None or lora is None or not ctx.model.hidden_size:
        return
    hidden = ctx.model.hidden_size
    if lora.dim > hidden:
        key = f"{PEFT}.dim" if cfg.policy.megatron_cfg.enabled else f"{LORA}.dim"
        yield Finding(key, f"dim {lora.dim} is above the model's hidden size {hidden}: an "
                      f"adapter on a {hidden}-wide layer has rank at most {hidden}, so the "
                      "extra rank adds parameters and memory but no capacity (PEFT allows it)",
                      f"use a dim well below {hidden} (LoRA typically uses 8-64)")


@rule("LR131", "error", "policy.optimizer: null with the DTensor backend")
def _dtensor_needs_optimizer(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    if cfg.policy.dtensor_cfg.enabled and cfg.policy.optimizer is None:
        yield Finding("policy.optimizer", "policy.optimizer is null, but the DTensor backend "
                      "trains with it (null is how NeMo RL's Megatron recipes say the DTensor "
                      "optimizer is not used)", "give policy.optimizer a name and kwargs, or "
                      f"remove the null to use the default AdamW ({DT}.enabled is true)")
