"""Tensors read back from a checkpoint, checked before anything uses them.

A checkpoint's manifest proves its files are the ones written, not that what was written fits
this run: a crafted (or mis-copied) checkpoint whose checksums match can hold other tensor
names, shapes or dtypes, NaN weights, or a `state.json` of the wrong structure. Loaded as is, it
gave tracebacks deep inside torch, or trained on from NaN. So:

- resume (`check_resumable`) compares a checkpoint with the tensors this run's backend would
  write itself (names, shapes, dtypes), requires every float tensor finite and the JSON state
  to have the structure the run reads, *before* anything is loaded; a checkpoint that fails is
  reported in one line and the previous one is tried (`checkpoint.latest_checkpoint`);
- export (`check_adapter`) requires a LoRA adapter of A/B pairs of the recipe's rank, finite,
  and, when the base model is a local directory, of the shapes of its linear layers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lora_rl.checkpoint import Checkpoint, CheckpointError
from lora_rl.interop.peft_format import expert_parameter
from lora_rl.state_file import CheckpointState, read_state

if TYPE_CHECKING:
    from lora_rl.backends.base import TrainingBackend
    from lora_rl.data.order import DataOrder

OPTIMIZER = "optimizer"
SEPARATOR = "::"


def _non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    return [name for name, t in tensors.items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _sample(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


# ---- resume ---------------------------------------------------------------------------------


def resume_check(backend: TrainingBackend, same_run: Callable[[CheckpointState, Path], None]
                 ) -> Callable[[Checkpoint], None]:
    """The `check` for `latest_checkpoint` at resume: `same_run` first (a checkpoint of another
    setup stops the run rather than being skipped), then `check_resumable` against what the
    backend writes itself (computed once, on every rank alike: it may be collective)."""
    expected: list[Any] = []

    def check(ckpt: Checkpoint) -> None:
        same_run(read_state(ckpt), ckpt.path)
        if not expected:
            optimizer = getattr(backend, "optimizer", None)
            fresh = optimizer is not None and not optimizer.state
            expected.extend([backend.checkpoint_tensors(), backend.optimizer_meta()])
            if fresh:  # torch's get_state_dict filled it by a zero-lr step: a run that starts
                optimizer.state.clear()  # fresh after all checkpoints fail must match a fresh run
        check_resumable(ckpt, expected[0], expected[1])

    return check


def restore(ckpt: Checkpoint, backend: TrainingBackend, order: DataOrder) -> None:
    """Load a checked checkpoint; anything the checks did not foresee is one clean error (the
    model may already hold part of it, so there is no falling back from here)."""
    state = read_state(ckpt)
    try:
        backend.load_checkpoint_tensors(ckpt.tensors, state.optimizer_meta.model_dump())
        order.load_state(state.algorithm.data.model_dump())
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{ckpt.path} passed its checks but cannot be restored "
                              f"({type(exc).__name__}: {str(exc)[:200]}); move it away to "
                              "resume from the previous checkpoint") from None


def check_resumable(ckpt: Checkpoint, expected: Mapping[str, Mapping[str, torch.Tensor]],
                    expected_meta: Mapping[str, Any]) -> None:
    """Raise CheckpointError unless `ckpt` can be restored into a backend whose own
    `checkpoint_tensors()` / `optimizer_meta()` are `expected` / `expected_meta`."""
    where = ckpt.path
    for group, want in expected.items():
        if group == OPTIMIZER:
            continue
        got = ckpt.tensors.get(group)
        if got is None:
            raise CheckpointError(f"{where}: no {group} tensors (this run trains a {group})")
        _same_tensors(where, group, got, want)
    optimizer = ckpt.tensors.get(OPTIMIZER)
    if optimizer is None:
        raise CheckpointError(f"{where}: no optimizer state")
    _optimizer_fits(where, optimizer, {n: t for g, ts in expected.items() if g != OPTIMIZER
                                       for n, t in ts.items()})
    _state_fits(where, read_state(ckpt), expected_meta)


def _same_tensors(where: Any, group: str, got: Mapping[str, torch.Tensor],
                  want: Mapping[str, torch.Tensor]) -> None:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        parts = ([f"{len(missing)} missing ({_sample(missing)})"] if missing else []) + \
                ([f"{len(extra)} unexpected ({_sample(extra)})"] if extra else [])
        raise CheckpointError(f"{where}: its {group} tensors do not match this run's model: "
                              f"{'; '.join(parts)}")
    for name, tensor in want.items():
        have = got[name]
        if tuple(have.shape) != tuple(tensor.shape) or have.dtype != tensor.dtype:
            raise CheckpointError(
                f"{where}: {group} tensor {name} is {have.dtype} {tuple(have.shape)}; this run's "
                f"model has {tensor.dtype} {tuple(tensor.shape)}")
    bad = _non_finite(got)
    if bad:
        raise CheckpointError(f"{where}: {len(bad)} {group} tensor(s) hold NaN or inf "
                              f"({_sample(bad)})")


def _optimizer_fits(where: Any, optimizer: Mapping[str, torch.Tensor],
                    weights: Mapping[str, torch.Tensor]) -> None:
    bad = _non_finite(optimizer)
    if bad:
        raise CheckpointError(f"{where}: {len(bad)} optimizer state tensor(s) hold NaN or inf "
                              f"({_sample(bad)})")
    for name, tensor in optimizer.items():
        param, sep, _key = name.rpartition(SEPARATOR)
        if not sep:
            raise CheckpointError(f"{where}: optimizer state entry {name} is not "
                                  f"'<parameter>{SEPARATOR}<state>'")
        if param in weights and tensor.dim() > 0 and tensor.shape != weights[param].shape:
            raise CheckpointError(f"{where}: optimizer state {name} has shape "
                                  f"{tuple(tensor.shape)}, its parameter "
                                  f"{tuple(weights[param].shape)}")


def _state_fits(where: Any, state: CheckpointState, expected_meta: Mapping[str, Any]) -> None:
    """What resume restores is present (types are `CheckpointState`'s), and the optimizer's
    parameter groups and scheduler are this run's."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"{where}/state.json: {what}")

    optimizer, scheduler = state.optimizer_meta.optimizer, state.optimizer_meta.scheduler
    if optimizer is None or scheduler is None:
        raise CheckpointError(f"{where}/state.json: optimizer_meta.optimizer/scheduler missing")
    need(state.algorithm.data is not None,
         "algorithm.data needs non-negative integers epoch, offset")
    groups = optimizer.get("param_groups")
    want_groups = expected_meta.get("optimizer", {}).get("param_groups")
    if want_groups is not None:
        need(isinstance(groups, list) and len(groups) == len(want_groups) and
             all(isinstance(g, dict) for g in groups),
             f"optimizer_meta.optimizer.param_groups: expected {len(want_groups)} group(s)")
        for got, want in zip(groups, want_groups, strict=True):
            if "params" in want:
                need(got.get("params") == want["params"],
                     "optimizer parameter groups name other parameters than this run trains")
    want_scheduler = expected_meta.get("scheduler")
    if isinstance(want_scheduler, dict):
        need(set(scheduler) == set(want_scheduler),
             "optimizer_meta.scheduler does not match this run's scheduler")


# ---- export ---------------------------------------------------------------------------------

LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"
MAGNITUDE = ".lora_magnitude_vector"


def _magnitudes(adapter: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DoRA's magnitudes (one per output row of an adapted module) by module name."""
    out = {}
    for name, tensor in adapter.items():
        if name.endswith(MAGNITUDE):
            if not tensor.is_floating_point() or tensor.dim() != 1:
                raise ValueError(f"adapter tensor {name} is {tensor.dtype} "
                                 f"{tuple(tensor.shape)}; a DoRA magnitude is a 1-D vector")
            out[name[: -len(MAGNITUDE)]] = tensor
    return out


def _pairs(adapter: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name -> (lora_A, lora_B), refusing anything that is not a 2-D A/B weight."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in adapter.items():
        if name.endswith(MAGNITUDE):
            continue
        suffix = LORA_A if name.endswith(LORA_A) else LORA_B if name.endswith(LORA_B) else None
        if suffix is None:
            raise ValueError(f"adapter tensor {name} is neither a lora_A nor a lora_B weight")
        if not tensor.is_floating_point() or tensor.dim() != 2:
            raise ValueError(f"adapter tensor {name} is {tensor.dtype} {tuple(tensor.shape)}; "
                             "LoRA weights are 2-D floating-point matrices")
        modules.setdefault(name[: -len(suffix)], {})[suffix] = tensor
    for module, pair in modules.items():
        if len(pair) != 2:
            raise ValueError(f"adapter module {module} has only "
                             f"{'lora_A' if LORA_A in pair else 'lora_B'}")
    return {module: (pair[LORA_A], pair[LORA_B]) for module, pair in modules.items()}


def _check_linear_pair(module: str, a: torch.Tensor, b: torch.Tensor, rank: int,
                       magnitude: torch.Tensor | None,
                       base: tuple[int, int] | None, shapes_known: bool) -> None:
    if a.shape[0] != rank or b.shape[1] != rank:
        raise ValueError(f"adapter module {module}: lora_A {tuple(a.shape)} and lora_B "
                         f"{tuple(b.shape)} are not of the recipe's rank {rank}")
    if magnitude is not None and magnitude.shape[0] != b.shape[0]:
        raise ValueError(f"adapter module {module}: DoRA magnitude of length "
                         f"{magnitude.shape[0]} for {b.shape[0]} output rows")
    if not shapes_known:
        return
    if base is None:
        raise ValueError(f"adapter module {module} is not a linear layer of the base model")
    if (b.shape[0], a.shape[1]) != base:
        raise ValueError(f"adapter module {module} maps {a.shape[1]} -> {b.shape[0]}, but "
                         f"the base model's layer maps {base[1]} -> {base[0]}")


def check_adapter(adapter: Mapping[str, torch.Tensor], rank: int,
                  linear_shapes: Mapping[str, tuple[int, int]] | None) -> None:
    """Raise ValueError unless `adapter` is finite A/B pairs of rank `rank`, A `[rank, in]` and
    B `[out, rank]`; with `linear_shapes` (module -> (out, in) of the base model), each pair
    must sit on one of its linear layers and fit it."""
    bad = _non_finite(adapter)
    if bad:
        raise ValueError(f"{len(bad)} adapter tensor(s) hold NaN or inf ({_sample(bad)}); "
                         "export an earlier checkpoint")
    magnitudes = _magnitudes(adapter)
    modules = _pairs(adapter)
    stray = sorted(set(magnitudes) - set(modules))
    if stray:
        raise ValueError(f"adapter has a DoRA magnitude for {stray[0]} but no lora_A/lora_B there")
    for module, (a, b) in sorted(modules.items()):
        if expert_parameter(module) is not None:
            # One adapter per expert, stacked: A [rank * E, in], B [out, rank * E]. Experts
            # are fused 3-D parameters, not linear layers: loading checks their fit.
            if a.shape[0] % rank or b.shape[1] != a.shape[0]:
                raise ValueError(f"adapter module {module}: lora_A {tuple(a.shape)} and lora_B "
                                 f"{tuple(b.shape)} are not per-expert adapters of the recipe's "
                                 f"rank {rank}")
            continue
        _check_linear_pair(module, a, b, rank, magnitudes.get(module),
                           (linear_shapes or {}).get(module), linear_shapes is not None)


def base_linear_shapes(model_dir: Any) -> dict[str, tuple[int, int]] | None:
    """Module name -> (out_features, in_features) of a local HF model's linear layers, built on
    the meta device (no weights read); None when the architecture cannot be built here."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, OSError, ImportError, TypeError):
        return None
    return {name: (m.out_features, m.in_features) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)}
