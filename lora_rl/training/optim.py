"""Optimizer and LR schedule from the recipe, over the trainable parameters only."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lora_rl.config.policy import OptimizerConfig, SchedulerMilestones, SchedulerStep
from lora_rl.errors import SetupError

_OPTIMIZERS = {
    "torch.optim.AdamW": torch.optim.AdamW,
    "torch.optim.Adam": torch.optim.Adam,
    "torch.optim.SGD": torch.optim.SGD,
}
_SCHEDULERS = {
    "torch.optim.lr_scheduler.LinearLR": torch.optim.lr_scheduler.LinearLR,
    "torch.optim.lr_scheduler.ConstantLR": torch.optim.lr_scheduler.ConstantLR,
    "torch.optim.lr_scheduler.CosineAnnealingLR": torch.optim.lr_scheduler.CosineAnnealingLR,
}


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig, *,
                    fast_params: Iterable[torch.nn.Parameter] = (),
                    fast_lr_ratio: float | None = None) -> torch.optim.Optimizer:
    """The recipe's optimizer over the trainable `params`. With `fast_lr_ratio`, those of
    `fast_params` (LoRA+: the B matrices) form a second group at lr * ratio, as PEFT's
    `create_loraplus_optimizer` does; both groups keep the recipe's weight decay."""
    kw = cfg.kwargs
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise SetupError("no trainable parameters: LoRA matched nothing and "
                         "full fine-tuning is off")
    groups = lr_groups(trainable, kw.lr, fast_params, fast_lr_ratio)
    if cfg.name == "torch.optim.SGD":
        return torch.optim.SGD(groups, lr=kw.lr, momentum=kw.momentum,
                               weight_decay=kw.weight_decay, foreach=kw.foreach)
    return _OPTIMIZERS[cfg.name](groups, lr=kw.lr, betas=kw.betas, eps=kw.eps,
                                 weight_decay=kw.weight_decay, foreach=kw.foreach)


def lr_groups(params: list[torch.nn.Parameter], lr: float,
              fast_params: Iterable[torch.nn.Parameter] = (),
              fast_lr_ratio: float | None = None) -> list[torch.nn.Parameter] | list[dict]:
    """The optimizer's parameter groups (both backends): `params` as one group, or with
    `fast_lr_ratio` (LoRA+) those of `fast_params` in a second group at lr * ratio, after
    the others (PEFT's `create_loraplus_optimizer`); an empty group is left out."""
    if fast_lr_ratio is None:
        return params
    fast = {id(p) for p in fast_params}
    slow_group = [p for p in params if id(p) not in fast]
    fast_group = [p for p in params if id(p) in fast]
    return [{"params": group, "lr": group_lr} for group, group_lr in
            ((slow_group, lr), (fast_group, lr * fast_lr_ratio)) if group]


def build_scheduler(optimizer: torch.optim.Optimizer,
                    steps: list[SchedulerStep | SchedulerMilestones] | None):
    """One scheduler, a SequentialLR chain (NeMo RL's list form), or a constant LR."""
    if not steps:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    schedulers = [_SCHEDULERS[s.name](optimizer, **s.kwargs) for s in steps
                  if isinstance(s, SchedulerStep)]
    milestones = [m for s in steps if isinstance(s, SchedulerMilestones) for m in s.milestones]
    if len(schedulers) == 1 and not milestones:
        return schedulers[0]
    if len(milestones) != len(schedulers) - 1:
        raise SetupError(f"policy.scheduler has {len(schedulers)} schedulers and "
                         f"{len(milestones)} milestones; SequentialLR needs one fewer milestone")
    return torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers, milestones)


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """Global L2 norm of the gradients, clipped to `max_norm` (None: no clipping), as
    torch.nn.utils.clip_grad_norm_ computes it. Works across plain tensors and DTensors on
    different meshes (which clip_grad_norm_ cannot stack); returns the norm before clipping."""
    squares = torch.zeros((), dtype=torch.float64)
    grads = [p.grad for p in params if p.grad is not None]
    for grad in grads:
        norm = torch.linalg.vector_norm(grad, 2)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        squares += norm.double() ** 2
    total = float(squares.sqrt())
    if max_norm is not None and total == total and total != float("inf"):
        coef = max_norm / (total + 1e-6)
        if coef < 1.0:
            for grad in grads:
                grad.mul_(coef)
    return total
