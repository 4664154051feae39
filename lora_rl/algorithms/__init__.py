"""Algorithms, written once against `lora_rl.backends.base.TrainingBackend`.

Each algorithm is one class with `setup()`, `train()` and `cleanup()` (torchtune's recipe shape):
`base.Algorithm` owns the loop and each algorithm fills in its hooks (data, one step,
validation); the losses are pure functions in `*_loss.py`. `run_algorithm` is the dispatcher
keyed by the recipe's algorithm section.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lora_rl.algorithms.base import Algorithm
    from lora_rl.backends.base import BackendInputs
    from lora_rl.config.recipe import RecipeConfig
    from lora_rl.training.runtime import Runtime


def run_algorithm(cfg: RecipeConfig, runtime: Runtime) -> None:
    from lora_rl.backends import build_backend
    from lora_rl.preflight import preflight

    preflight(cfg)  # reward function and weight files, before the model loads
    backend = build_backend(backend_inputs(cfg), runtime)
    algorithm = algorithm_class(cfg)(cfg, backend, runtime)
    try:
        algorithm.setup()
        algorithm.train()
        algorithm.session.finish()
    finally:
        algorithm.cleanup()


def backend_inputs(cfg: RecipeConfig) -> BackendInputs:
    """What a backend is built from: the policy section and the run-level facts it needs (the
    one place a backend's inputs are taken from the recipe)."""
    from lora_rl.backends.base import BackendInputs

    algo = cfg.algorithm_config
    return BackendInputs(policy=cfg.policy, seed=algo.seed, max_num_steps=algo.max_num_steps,
                         needs_reference=cfg.needs_reference_policy)


def algorithm_class(cfg: RecipeConfig) -> type[Algorithm]:
    """The class that runs the recipe's algorithm section."""
    if cfg.algorithm == "sft":
        from lora_rl.algorithms.sft import SFT

        return SFT
    if cfg.algorithm == "dpo":
        from lora_rl.algorithms.dpo import DPO

        return DPO
    from lora_rl.algorithms.grpo import GRPO

    return GRPO
