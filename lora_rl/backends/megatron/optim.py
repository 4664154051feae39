"""Optimizer, learning-rate schedule and gradient reductions from `megatron_cfg`.

Megatron's "adam" is AdamW (decoupled weight decay), built here as torch's AdamW over the
trainable parameters' main copies (`MainParams`); the schedule reproduces Megatron's
OptimizerParamScheduler learning rate (linear warm-up from `lr_warmup_init`, then constant /
linear / cosine decay to `min_lr`).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from lora_rl.backends.megatron.parallel import Layout, is_expert_parameter
from lora_rl.backends.megatron.sharding import kind_of
from lora_rl.config.megatron import MegatronOptimizerConfig, MegatronSchedulerConfig
from lora_rl.errors import SetupError
from lora_rl.lora.naming import is_lora_plus_parameter
from lora_rl.training.optim import lr_groups


class MainParams:
    """The parameters the optimizer updates, in `optimizer.params_dtype` (Megatron's main
    parameters): a trainable weight stored in a lower precision (bf16 model, `lora_dtype` null)
    gets a float32 copy, so small updates are not rounded away. Weights already in that dtype
    are their own main copy and cost nothing."""

    def __init__(self, params: list[torch.nn.Parameter], dtype: torch.dtype) -> None:
        self.model = params
        self.params = [p if p.dtype == dtype else
                       torch.nn.Parameter(p.detach().to(dtype), requires_grad=True)
                       for p in params]

    def take_grads(self) -> None:
        """Model gradients -> main gradients (after backward, before reductions)."""
        for model, main in zip(self.model, self.params, strict=True):
            if main is not model and model.grad is not None:
                main.grad = model.grad.to(main.dtype)
                model.grad = None

    @torch.no_grad()
    def publish(self) -> None:
        """Main values -> model weights (after an update or a load)."""
        for model, main in zip(self.model, self.params, strict=True):
            if main is not model:
                model.copy_(main)


def build_optimizer(names: list[str], params: list[torch.nn.Parameter],
                    cfg: MegatronOptimizerConfig,
                    lora_plus_lr_ratio: float | None = None) -> torch.optim.Optimizer:
    """Over the main `params` (Megatron global `names`); with `lora_plus_lr_ratio` (LoRA+) the
    B matrices and DoRA magnitudes form a second group at lr * ratio, grouped as the DTensor
    backend groups them."""
    if not params:
        raise SetupError("no trainable parameters: LoRA matched nothing on this pipeline stage "
                         "and full fine-tuning is off")
    fast = [p for n, p in zip(names, params, strict=True) if is_lora_plus_parameter(n)]
    groups = lr_groups(params, cfg.lr, fast, lora_plus_lr_ratio)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.sgd_momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


class MegatronLR:
    """LR multiplier at an optimizer step, as Megatron's scheduler computes the LR.
    A plain object (not a closure) so LambdaLR's state_dict captures it."""

    def __init__(self, optim: MegatronOptimizerConfig, sched: MegatronSchedulerConfig,
                 total_steps: int) -> None:
        self.peak = optim.lr
        self.floor = optim.min_lr
        self.init = sched.lr_warmup_init
        self.warmup = sched.lr_warmup_iters
        self.decay_steps = sched.lr_decay_iters or total_steps
        self.style = sched.lr_decay_style

    def __call__(self, step: int) -> float:
        return self.lr(step) / self.peak

    def lr(self, step: int) -> float:
        if self.warmup > 0 and step <= self.warmup:
            return self.init + (self.peak - self.init) * step / self.warmup
        if self.style == "constant":
            return self.peak
        if step > self.decay_steps:
            return self.floor
        ratio = (step - self.warmup) / max(1, self.decay_steps - self.warmup)
        if self.style == "linear":
            coeff = 1.0 - ratio
        else:
            coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return self.floor + coeff * (self.peak - self.floor)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: MegatronOptimizerConfig,
                    sched: MegatronSchedulerConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, MegatronLR(optim, sched, total_steps))


def partial_over_tensor_parallel(name: str, param: torch.nn.Parameter, layout: Layout) -> bool:
    """Whether a replicated weight's gradient holds only this tensor-parallel rank's share, to be
    summed over the tp group (megatron-core's `finalize_model_grads` rule): under sequence
    parallelism the weights Megatron marks `sequence_parallel` (norms, the MoE router; here also
    a row-parallel DoRA magnitude) saw this rank's part of the sequence only; q/k layernorms
    always see this rank's heads only. Experts are summed over their own group instead."""
    if layout.tp == 1 or is_expert_parameter(name):
        return False
    return (layout.sp and getattr(param, "sequence_parallel", False)) \
        or name.split(".")[-2] in ("q_layernorm", "k_layernorm")


def sum_gradients(names: list[str], params: list[torch.nn.Parameter],
                  partial_over_tp: list[bool], layout: Layout) -> None:
    """Each replica's loss is already a share of the global-batch mean: sum, do not average.
    One flat buffer per group per step (gloo is latency-bound on many small tensors).
    - `partial_over_tp` (`partial_over_tensor_parallel`): summed over tensor-parallel ranks
      first. LoRA's A and B always see the whole sequence and every head they act on.
    - An expert's gradient holds the tokens that reached it on this rank only (after the
      token all-to-all under expert parallelism; this rank's part of the sequence under
      sequence parallelism): it is summed over every rank holding that expert, Megatron's
      expert data-parallel group (the data-parallel group when tp = ep = 1)."""
    dense = [p.grad for n, p in zip(names, params, strict=True)
             if p.grad is not None and not is_expert_parameter(n)]
    experts = [p.grad for n, p in zip(names, params, strict=True)
               if p.grad is not None and is_expert_parameter(n)]
    if layout.tp > 1:
        _all_reduce_flat([p.grad for p, partial in zip(params, partial_over_tp, strict=True)
                          if partial and p.grad is not None], layout.tp_group)
    if layout.dp > 1:
        _all_reduce_flat(dense, layout.dp_group)
    if layout.expert_dp > 1:
        _all_reduce_flat(experts, layout.expert_dp_group)


def _all_reduce_flat(grads: list[torch.Tensor], group: dist.ProcessGroup) -> None:
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def counted_once(name: str, layout: Layout) -> bool:
    """Whether this rank contributes non-expert parameter `name` to whole-model sums: every
    shard of a split parameter, a replicated one on tensor-parallel rank 0 only."""
    return kind_of(name) != "replicated" or layout.tp_rank == 0


def whole_model_sum(named: list[tuple[str, torch.Tensor]], layout: Layout) -> torch.Tensor:
    """The sum over the whole model of per-parameter `named` tensors (collective): each
    non-expert parameter once (`counted_once`, then over tensor and pipeline ranks); experts,
    whole on every tensor-parallel rank and split among expert-parallel ranks, over the
    expert-parallel group and the pipeline stages."""
    zero = torch.zeros_like(named[0][1]) if named else torch.zeros((), dtype=torch.float64)
    dense = sum((v for n, v in named if not is_expert_parameter(n) and counted_once(n, layout)),
                zero.clone())
    experts = sum((v for n, v in named if is_expert_parameter(n)), zero.clone())
    if layout.ep > 1:
        dist.all_reduce(experts, group=layout.ep_group)
    if layout.pp > 1:
        dist.all_reduce(experts, group=layout.pp_group)
    if layout.tp * layout.pp > 1:
        dist.all_reduce(dense, group=layout.model_parallel_group)
    return dense + experts


def clip_gradients(names: list[str], params: list[torch.nn.Parameter], max_norm: float | None,
                   layout: Layout) -> float:
    """Global L2 norm over the whole model (sharded parameters in full, replicated ones once),
    as a single process would compute it; scales gradients down to `max_norm`."""
    grads = [(n, p.grad) for n, p in zip(names, params, strict=True) if p.grad is not None]
    squares = [(n, torch.linalg.vector_norm(g, 2).double() ** 2) for n, g in grads]
    total = float(whole_model_sum(squares, layout).sqrt())
    if max_norm is not None and math.isfinite(total):
        coef = max_norm / (total + 1e-6)
        if coef < 1.0:
            for _, grad in grads:
                grad.mul_(coef)
    return total
