"""Checks at the start of a run, on every rank, before the model loads: what the recipe makes
lora-rl trust (its reward function, its weight files) is refused in one line, not after minutes
of loading or mid-training with a traceback."""

from __future__ import annotations

from lora_rl.config.recipe import RecipeConfig


def preflight(cfg: RecipeConfig) -> None:
    """Raises RewardError / ModelSourceError (both ValueErrors) with a one-line reason."""
    from lora_rl.model_source import check_weights, require_local_model_dir

    if cfg.algorithm == "grpo":
        from lora_rl.rewards import load_reward

        load_reward(cfg.env.reward, cfg.env.reward_kwargs)
    check_weights(require_local_model_dir(cfg.policy.model_name),
                  cfg.policy.allow_pickle_weights)
