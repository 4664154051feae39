"""The DTensor backend: build -> (tensor parallel) -> FSDP2 -> train steps and checkpoints."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import FSDPModule

from lora_rl.backends.base import (
    BackendInputs,
    FrozenReference,
    LossFn,
    StepStats,
    TokenBatch,
    adapter_off_reference,
    eval_mode,
)
from lora_rl.backends.dtensor.generation_copy import GenerationCopy
from lora_rl.backends.dtensor.model import BuiltPolicy, build_policy_model
from lora_rl.backends.dtensor.sharding import shard_model
from lora_rl.backends.optimizer_state import flatten_optimizer_state, unflatten_optimizer_state
from lora_rl.backends.token_logprobs import batch_token_logprobs
from lora_rl.config.policy import PolicyConfig
from lora_rl.lora.naming import unwrapped_name
from lora_rl.training.optim import build_optimizer, build_scheduler, clip_gradients
from lora_rl.training.runtime import Runtime


def lora_plus_groups(model: torch.nn.Module, policy: PolicyConfig) -> dict[str, Any]:
    """build_optimizer's LoRA+ arguments: B matrices at lr * lora_plus_lr_ratio."""
    lora = policy.dtensor_cfg.lora_cfg
    if not lora.enabled or lora.lora_plus_lr_ratio is None:
        return {}
    from lora_rl.lora import lora_plus_parameters

    return {"fast_params": lora_plus_parameters(model),
            "fast_lr_ratio": lora.lora_plus_lr_ratio}


class DTensorBackend:
    def __init__(self, inputs: BackendInputs, runtime: Runtime,
                 built: BuiltPolicy | None = None) -> None:
        """`built`: a model already loaded, with this policy's adapter in place (a
        multi-adapter run shares one base, `adapter_slots`); by default the policy's own."""
        policy = inputs.policy
        self.runtime = runtime
        self.built = built or build_policy_model(policy, seed=inputs.seed)
        self.model = self.built.model
        tp = policy.dtensor_cfg.tensor_parallel_size
        self.dp_size = runtime.world_size // tp
        self.mesh = self.built.mesh if self.built.mesh is not None else shard_model(
            self.model, runtime, tp=tp, dp=self.dp_size, lora=self.built.lora_report is not None)
        self.dp_rank = self.mesh.get_local_rank("dp") if self.mesh is not None else 0
        self.optimizer = build_optimizer(self.model.parameters(), policy.optimizer,
                                         **lora_plus_groups(self.model, policy))
        self.scheduler = build_scheduler(self.optimizer, policy.scheduler)
        self.max_grad_norm = policy.max_grad_norm or None  # 0: no clipping
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._generation_copy = GenerationCopy(
            self.model, self.built.model_dir, policy.precision, policy.trust_remote_code,
            lora=policy.dtensor_cfg.lora_cfg if self.built.lora_report is not None else None)
        # Full fine-tuning's reference policy: the starting weights, copied before any step or
        # resume (with LoRA the reference is the adapter turned off, no copy).
        self._reference = FrozenReference(self.model) \
            if self.built.lora_report is None and inputs.needs_reference else None

    # ---- forward / backward ---------------------------------------------------------------

    def token_logprobs(self, batch: TokenBatch) -> torch.Tensor:
        return batch_token_logprobs(self.model, batch)

    def forward_backward(self, micro_batches: list[TokenBatch],
                         loss_fn: LossFn) -> dict[str, float]:
        self.model.train()
        totals: dict[str, float] = {}
        for index, batch in enumerate(micro_batches):
            if isinstance(self.model, FSDPModule):
                # Reduce-scatter gradients once, after the last micro-batch.
                self.model.set_requires_gradient_sync(index == len(micro_batches) - 1)
            loss, metrics = loss_fn(self.token_logprobs(batch), batch)
            # FSDP averages gradients over data-parallel ranks; losses arrive already divided by
            # the *global* normaliser, so undo the average to get the exact global mean.
            (loss * self.dp_size).backward()
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value
        return totals

    def optimizer_step(self) -> StepStats:
        norm = self._grad_norm()
        finite = math.isfinite(norm)
        if finite:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepStats(grad_norm=norm, lr=self.scheduler.get_last_lr()[0], skipped=not finite)

    def _grad_norm(self) -> float:
        return clip_gradients(self._trainable, self.max_grad_norm)

    def reference_policy(self) -> AbstractContextManager[None]:
        if self._reference is not None:
            return self._reference.swapped_in()
        return adapter_off_reference(self.model, self.built.lora_report is not None)

    def eval_mode(self) -> AbstractContextManager[None]:
        return eval_mode(self.model)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if self.mesh is None or self.dp_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(tensor, group=self.mesh.get_group("dp"))
        return tensor.tolist()

    @property
    def model_dir(self) -> Path:
        return self.built.model_dir

    # ---- checkpoints ----------------------------------------------------------------------

    _STATE_OPTIONS = StateDictOptions(full_state_dict=True, ignore_frozen_params=True)

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=self._STATE_OPTIONS)
        optimizer_tensors, _ = flatten_optimizer_state(optim_sd)
        name = "adapter" if self.built.lora_report is not None else "model"
        if name == "adapter":
            # ignore_frozen_params misses the second name of a tied (frozen) weight, e.g. a
            # tied lm_head.weight: keep exactly the trainable parameters.
            trainable = {unwrapped_name(n) for n, p in self.model.named_parameters()
                         if p.requires_grad}
            model_sd = {k: v for k, v in model_sd.items() if unwrapped_name(k) in trainable}
        return {name: dict(model_sd), "optimizer": optimizer_tensors}

    def optimizer_meta(self) -> dict:
        """What `flatten_optimizer_state` makes of `get_state_dict`'s optimizer state, from the
        local optimizer: no collective, so the main rank alone may call it."""
        names = {id(p): unwrapped_name(n) for n, p in self.model.named_parameters()}
        groups = [{**{k: v for k, v in group.items() if k != "params"},
                   "params": [names[id(p)] for p in group["params"]]}
                  for group in self.optimizer.param_groups]
        scalars = {names[id(p)]: scalar for p, entries in self.optimizer.state.items()
                   if (scalar := {k: v for k, v in entries.items()
                                  if not isinstance(v, torch.Tensor)})}
        return {"optimizer": {"param_groups": groups, "scalars": scalars},
                "scheduler": self.scheduler.state_dict()}

    def load_checkpoint_tensors(self, tensors: dict[str, dict[str, torch.Tensor]],
                                optimizer_meta: dict) -> None:
        name = "adapter" if self.built.lora_report is not None else "model"
        optim_sd = unflatten_optimizer_state(tensors["optimizer"], optimizer_meta["optimizer"])
        set_state_dict(self.model, self.optimizer, model_state_dict=tensors[name],
                       optim_state_dict=optim_sd,
                       options=StateDictOptions(full_state_dict=True, strict=False))
        self.scheduler.load_state_dict(optimizer_meta["scheduler"])

    def trainable_report(self) -> dict[str, int | float | str]:
        return self.built.report()

    @contextlib.contextmanager
    def generation_model(self) -> Iterator[torch.nn.Module]:
        if self.mesh is None:
            yield self.model
            return
        with self._generation_copy.synced() as module:
            yield module
