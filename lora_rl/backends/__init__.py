"""Training backends. Each builds the policy from the validated recipe and exposes the same
small interface (`TrainingBackend`), so algorithms are written once."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lora_rl.backends.base import TrainingBackend
    from lora_rl.config.recipe import RecipeConfig
    from lora_rl.training.runtime import Runtime


def build_backend(cfg: RecipeConfig, runtime: Runtime) -> TrainingBackend:
    """The backend the recipe enables (validation guarantees exactly one)."""
    if cfg.policy.megatron_cfg.enabled:
        from lora_rl.backends.megatron import MegatronBackend

        return MegatronBackend(cfg, runtime)
    from lora_rl.backends.dtensor import DTensorBackend

    return DTensorBackend(cfg, runtime)
