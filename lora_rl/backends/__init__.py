"""Training backends. Each builds the policy from its `BackendInputs` (the policy section and a
few run-level facts, not the whole recipe) and exposes the same small interface
(`TrainingBackend`), so algorithms are written once."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lora_rl.backends.base import BackendInputs, TrainingBackend
    from lora_rl.training.runtime import Runtime


def build_backend(inputs: BackendInputs, runtime: Runtime) -> TrainingBackend:
    """The backend the policy enables (validation guarantees exactly one)."""
    if inputs.policy.megatron_cfg.enabled:
        from lora_rl.backends.megatron import MegatronBackend

        return MegatronBackend(inputs, runtime)
    from lora_rl.backends.dtensor import DTensorBackend

    return DTensorBackend(inputs, runtime)
