"""The seam between algorithms and backends.

Algorithms see token log-probabilities and a loss callback; how the model is sharded, how the
micro-batches are scheduled and how gradients are reduced is the backend's business.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from lora_rl.config.policy import PolicyConfig


@dataclass(frozen=True)
class BackendInputs:
    """What a backend is built from: the policy section and the few run-level facts it needs.
    Built from the validated recipe in one place (`lora_rl.algorithms.backend_inputs`);
    backends never see the rest of the recipe."""

    policy: PolicyConfig
    seed: int
    """The algorithm's seed: LoRA initialisation and Megatron's model-parallel RNG."""
    max_num_steps: int
    """The run's length, for Megatron's learning-rate schedule."""
    needs_reference: bool
    """Whether the algorithm compares against a frozen reference policy (DPO; GRPO with a KL
    penalty): full fine-tuning then keeps a copy of the starting weights."""


@dataclass
class TokenBatch:
    """Right-padded token sequences. Shapes: [B, L]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    """1 where the token is a training target (the response), 0 on prompt and padding."""
    segment_ids: torch.Tensor | None = field(default=None, kw_only=True)
    """Packed rows (data/packing.py): k > 0 for the tokens of the row's k-th example, 0 on
    padding; None for one example per row."""

    @property
    def target_mask(self) -> torch.Tensor:
        """[B, L-1]: mask aligned with `token_logprobs` (token t+1 predicted at t)."""
        return self.loss_mask[:, 1:].float()


LossFn = Callable[[torch.Tensor, TokenBatch], tuple[torch.Tensor, dict[str, float]]]
"""(token_logprobs [B, L-1], batch) -> (loss already normalised for the global batch, metrics)."""


@dataclass(frozen=True)
class StepStats:
    grad_norm: float
    lr: float
    skipped: bool
    """True when the gradients were not finite and the update was not applied."""


class TrainingBackend(Protocol):
    dp_rank: int
    dp_size: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    """Built from the recipe; a resume restores both, then re-applies edited hyperparameters."""

    @property
    def model_dir(self) -> Path:
        """The local Hugging Face directory the base model was loaded from (a generation
        engine such as vLLM loads the same files)."""

    def token_logprobs(self, batch: TokenBatch) -> torch.Tensor:
        """[B, L-1] log p(token t+1 | tokens <= t) under the current policy (differentiable)."""

    def forward_backward(self, micro_batches: list[TokenBatch],
                         loss_fn: LossFn) -> dict[str, float]:
        """Accumulate gradients of `loss_fn` over this rank's micro-batches; summed metrics."""

    def optimizer_step(self) -> StepStats:
        """Clip, step (unless gradients are not finite), schedule, zero gradients."""

    def reference_policy(self) -> AbstractContextManager[None]:
        """Within this context the model is the frozen reference: LoRA disabled, or, for full
        fine-tuning, the starting weights swapped in (`FrozenReference`)."""

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum over data-parallel ranks."""

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Trainable weights and optimizer state, full (unsharded), on every rank."""

    def load_checkpoint_tensors(self, tensors: dict[str, dict[str, torch.Tensor]],
                                optimizer_meta: dict) -> None:
        """Restore what `checkpoint_tensors` returned."""

    def optimizer_meta(self) -> dict:
        """JSON-serialisable optimizer/scheduler state that is not tensors; independent of
        `checkpoint_tensors` (either may be called first)."""

    def generation_model(self) -> AbstractContextManager[torch.nn.Module]:
        """A plain (unsharded) module to sample from, with the current adapter in effect."""

    def trainable_report(self) -> dict[str, int | float | str]:
        """Trainable / total parameters and the LoRA scale, for logs and explain."""

    def eval_mode(self) -> Iterator[None]:
        """Context: dropout off, no grad."""


# Shared by every backend: both hold one nn.Module whose LoRA layers come from lora_rl.lora.


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off and no autograd for the block; the previous training mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class FrozenReference:
    """Full fine-tuning's reference policy: the trainable weights as they were at the start
    (NeMo RL's frozen reference model), kept as one copy and swapped into the model in place
    for a block. In-place copies keep every parameter object, its sharding (DTensor/FSDP2) and
    the optimizer's references to it; a swap back restores the trained weights bit for bit.
    Memory: one copy of the trainable weights (this rank's shards), plus one parameter at a
    time while swapping."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        with torch.no_grad():
            self.params = [p for p in model.parameters() if p.requires_grad]
            self.saved = [p.detach().clone() for p in self.params]

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        with torch.no_grad():
            for param, saved in zip(self.params, self.saved, strict=True):
                held = param.detach().clone()
                param.copy_(saved)
                saved.copy_(held)
        # FSDP2 keeps the root's gathered (unsharded) weights after a forward: drop them, so
        # the next forward gathers the weights now in place.
        from torch.distributed.fsdp import FSDPModule

        for module in self.model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()


@contextlib.contextmanager
def adapter_off_reference(model: torch.nn.Module, has_lora: bool) -> Iterator[None]:
    """The frozen reference policy: the same module with its adapters disabled (no copy)."""
    from lora_rl.lora import disable_lora

    if not has_lora:
        raise RuntimeError("a reference policy needs LoRA or a FrozenReference copy")
    with disable_lora(model):
        yield
