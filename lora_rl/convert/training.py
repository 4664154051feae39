"""The training settings each backend spells its own way, carried by `lora-rl convert`.

DTensor reads `policy.optimizer`, `policy.scheduler` (torch schedulers, chained with
SequentialLR) and `policy.max_grad_norm`; Megatron reads `megatron_cfg.optimizer` and
`megatron_cfg.scheduler` (warm-up, then constant / linear / cosine decay to `min_lr`). Both
read `policy.precision`, `activation_checkpointing` is per backend. A converted recipe must train
the same: every setting with a counterpart is carried, and a schedule or optimizer the other
backend cannot express is a `CannotCarry` error, not a silent default (a learning rate that
drops from 5e-3 to Megatron's default 5e-6 does not learn).

Schedules are compared as functions of the optimizer step: `Schedule` is the shape both
backends can express, read from one side and written to the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lora_rl.config.policy import SchedulerMilestones, SchedulerStep
from lora_rl.config.recipe import RecipeConfig
from lora_rl.convert import ConvertError

LINEAR = "torch.optim.lr_scheduler.LinearLR"
CONSTANT = "torch.optim.lr_scheduler.ConstantLR"
COSINE = "torch.optim.lr_scheduler.CosineAnnealingLR"
FOREVER = 10**9
"""total_iters of a ConstantLR that holds for the rest of any run."""
MIN_START = 1e-8
"""torch's LinearLR needs start_factor > 0; Megatron warms up from lr_warmup_init (often 0).
A start of 1e-8 x lr differs from 0 by less than fp32 resolution of any real learning rate."""


class CannotCarry(ConvertError):
    """A setting of the source backend that the target backend cannot express (exit 1)."""


@dataclass(frozen=True)
class Schedule:
    """Megatron's schedule shape: linear warm-up from `init` over `warmup` steps, then
    `style` decay to `floor` at step `decay_end` (None: the last step), then `floor`."""

    warmup: int = 0
    init: float = 0.0
    style: str = "constant"
    decay_end: int | None = None
    floor: float = 0.0


@dataclass
class Carried:
    """Values to write (dotted key under `policy` -> value) and notes for the user."""

    values: dict[str, Any]
    notes: list[str]
    losses: list[tuple[str, str]]


# ---- DTensor -> Megatron -------------------------------------------------------------------


def to_megatron(cfg: RecipeConfig) -> Carried:
    p = cfg.policy
    kw, name = p.optimizer.kwargs, p.optimizer.name
    if name == "torch.optim.Adam" and kw.weight_decay:
        raise CannotCarry("policy.optimizer: torch.optim.Adam applies weight_decay "
                          f"{kw.weight_decay:g} as an L2 penalty; Megatron's adam decays "
                          "decoupled (AdamW): use torch.optim.AdamW or weight_decay: 0 first")
    values: dict[str, Any] = {
        "megatron_cfg.optimizer.optimizer": "sgd" if name == "torch.optim.SGD" else "adam",
        "megatron_cfg.optimizer.lr": kw.lr,
        "megatron_cfg.optimizer.weight_decay": kw.weight_decay,
        "megatron_cfg.optimizer.clip_grad": p.max_grad_norm,
        "megatron_cfg.optimizer.params_dtype": p.precision,  # DTensor trains in the precision
        "megatron_cfg.activation_checkpointing": p.dtensor_cfg.activation_checkpointing,
    }
    if name == "torch.optim.SGD":
        values["megatron_cfg.optimizer.sgd_momentum"] = kw.momentum
    else:
        values.update({"megatron_cfg.optimizer.adam_beta1": kw.betas[0],
                       "megatron_cfg.optimizer.adam_beta2": kw.betas[1],
                       "megatron_cfg.optimizer.adam_eps": kw.eps})
    sched = read_torch_schedule(p.scheduler, kw.lr, cfg.algorithm_config.max_num_steps)
    values.update({"megatron_cfg.scheduler.lr_warmup_iters": sched.warmup,
                   "megatron_cfg.scheduler.lr_warmup_init": sched.init,
                   "megatron_cfg.scheduler.lr_decay_style": sched.style,
                   "megatron_cfg.scheduler.lr_decay_iters": sched.decay_end,
                   "megatron_cfg.optimizer.min_lr": sched.floor})
    return Carried(values, [], [])


def read_torch_schedule(steps: list | None, lr: float, total: int | None) -> Schedule:
    """The Megatron schedule equal to a DTensor `policy.scheduler`, or CannotCarry."""
    chain = [s for s in steps or [] if isinstance(s, SchedulerStep)]
    marks = [m for s in steps or [] if isinstance(s, SchedulerMilestones) for m in s.milestones]
    warmup, init = 0, 0.0
    if chain and _is_warmup(chain[0]) and (len(chain) == 1 or _kw(chain[0], "end_factor") == 1):
        warmup = int(_kw(chain[0], "total_iters"))
        init = _kw(chain[0], "start_factor") * lr
        if len(chain) > 1 and marks[:1] != [warmup]:
            raise CannotCarry(f"policy.scheduler: the warm-up lasts {warmup} steps but the next "
                              f"scheduler starts at step {marks[:1]}; Megatron decays right "
                              "after warm-up: make the milestone equal total_iters")
        chain, marks = chain[1:], marks[1:]
    if not chain:
        return Schedule(warmup, init)
    decay, rest = chain[0], chain[1:]
    if rest and not (len(rest) == 1 and rest[0].name == CONSTANT):
        raise CannotCarry(_unexpressible(steps))
    if decay.name == CONSTANT and _kw(decay, "factor") == 1.0 and not rest:
        return Schedule(warmup, init)
    if decay.name == LINEAR and _kw(decay, "start_factor") == 1.0:
        span, floor = int(_kw(decay, "total_iters")), _kw(decay, "end_factor") * lr
        style = "linear"
    elif decay.name == COSINE:
        span, floor, style = int(_kw(decay, "T_max")), _kw(decay, "eta_min"), "cosine"
        periodic = not rest and total is not None and total > warmup + span
        if periodic:  # torch's cosine rises again after T_max; Megatron holds min_lr
            raise CannotCarry(f"policy.scheduler: CosineAnnealingLR T_max {span} ends before "
                              f"the run's {total} steps and then rises again, which Megatron's "
                              "cosine (it holds min_lr) cannot express: set T_max to cover the "
                              "run, or hold the floor with a final ConstantLR")
    else:
        raise CannotCarry(_unexpressible(steps))
    if rest and (marks[:1] != [warmup + span] or abs(_kw(rest[0], "factor") * lr - floor)
                 > 1e-12 * lr):
        raise CannotCarry(_unexpressible(steps))
    return Schedule(warmup, init, style, warmup + span, floor)


_TORCH_DEFAULTS = {"start_factor": 1 / 3, "end_factor": 1.0, "total_iters": 5, "factor": 1 / 3,
                   "eta_min": 0.0}


def _kw(step: SchedulerStep, key: str) -> float:
    return float(step.kwargs.get(key, _TORCH_DEFAULTS.get(key, 0.0)))


def _is_warmup(step: SchedulerStep) -> bool:
    return step.name == LINEAR and _kw(step, "start_factor") < 1.0 and _kw(step, "end_factor") == 1


def _unexpressible(steps: list | None) -> str:
    names = [s.name.rsplit(".", 1)[-1] for s in steps or [] if isinstance(s, SchedulerStep)]
    return (f"policy.scheduler ({' -> '.join(names)}) is not a shape Megatron's scheduler "
            "has (linear warm-up, then constant, linear or cosine decay to min_lr); write it "
            "as LinearLR warm-up + one of ConstantLR(factor 1), LinearLR(start_factor 1), "
            "CosineAnnealingLR")


# ---- Megatron -> DTensor -------------------------------------------------------------------


def to_dtensor(cfg: RecipeConfig) -> Carried:
    p, mg = cfg.policy, cfg.policy.megatron_cfg
    opt = mg.optimizer
    losses = []
    if opt.params_dtype != p.precision:
        losses.append(("policy.megatron_cfg.optimizer.params_dtype",
                       f"Megatron keeps {opt.params_dtype} main weights; DTensor trains the "
                       f"adapter in policy.precision ({p.precision})"))
    kwargs: dict[str, Any] = {"lr": opt.lr, "weight_decay": opt.weight_decay}
    if opt.optimizer == "sgd":
        kwargs["momentum"] = opt.sgd_momentum
    else:
        kwargs.update(betas=[opt.adam_beta1, opt.adam_beta2], eps=opt.adam_eps)
    sched = Schedule(mg.scheduler.lr_warmup_iters, mg.scheduler.lr_warmup_init,
                     mg.scheduler.lr_decay_style, mg.scheduler.lr_decay_iters, opt.min_lr)
    total = cfg.algorithm_config.max_num_steps
    values = {
        "optimizer.name": "torch.optim.SGD" if opt.optimizer == "sgd" else "torch.optim.AdamW",
        "optimizer.kwargs": kwargs,
        "max_grad_norm": opt.clip_grad,
        "scheduler": write_torch_schedule(sched, opt.lr, total),
        "dtensor_cfg.activation_checkpointing": mg.activation_checkpointing,
    }
    return Carried(values, [], losses)


def write_torch_schedule(sched: Schedule, lr: float, total: int | None) -> list[dict] | None:
    """A DTensor `policy.scheduler` with Megatron's LR at every step (MegatronLR)."""
    chain: list[dict[str, Any]] = []
    marks: list[int] = []
    if sched.warmup > 0:
        start = max(sched.init / lr, MIN_START)
        if start >= 1.0:
            raise CannotCarry("megatron_cfg.scheduler.lr_warmup_init is not below the "
                              "learning rate: that is not a warm-up torch's LinearLR can express")
        chain.append({"name": LINEAR, "kwargs": {"start_factor": start, "end_factor": 1.0,
                                                 "total_iters": sched.warmup}})
    if sched.style != "constant":
        end = sched.decay_end or total
        if end is None or end <= sched.warmup:
            raise CannotCarry("megatron_cfg.scheduler: the decay needs lr_decay_iters (or "
                              "the algorithm's max_num_steps) beyond the warm-up")
        span = end - sched.warmup
        if sched.style == "linear":
            step = {"name": LINEAR, "kwargs": {"start_factor": 1.0,
                                               "end_factor": sched.floor / lr,
                                               "total_iters": span}}
        else:
            step = {"name": COSINE, "kwargs": {"T_max": span, "eta_min": sched.floor}}
        if chain:
            marks.append(sched.warmup)
        chain.append(step)
        if sched.style == "cosine" and (total is None or total > end):
            # torch's cosine rises again after T_max; Megatron holds min_lr.
            marks.append(end)
            chain.append({"name": CONSTANT, "kwargs": {"factor": sched.floor / lr,
                                                       "total_iters": FOREVER}})
    if not chain:
        return None
    return chain + ([{"milestones": marks}] if marks else [])
