"""Resuming with an edited recipe: what may change, what may not, and nothing silently kept.

Every checkpoint records the recipe settings that matter to a resume (`recipe_record`). On
resume the new recipe is compared with it:
- settings that define the trained state (algorithm, model, LoRA shape and targets,
  optimizer type) must be equal: `fixed_changes` lists each differing key with both values,
  and the resume is refused before anything is loaded;
- the parallel layout may change: checkpoints hold whole tensors (docs/megatron.md), which
  are resharded to the new layout;
- settings of the optimizer and LR schedule (lr, weight decay, betas, eps, momentum,
  scheduler) are applied to the restored optimizer and scheduler (`apply_recipe_hparams`),
  whose saved values would otherwise win;
- the rest (max steps, validation, logging, checkpointing, clipping) is read from the recipe
  at every step anyway. Every change is announced in one line.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

from lora_rl.config.recipe import RecipeConfig

OPTIMIZER_PREFIXES = ("policy.optimizer.kwargs.", "policy.scheduler",
                      "policy.megatron_cfg.optimizer.", "policy.megatron_cfg.scheduler.")
"""Adjustable keys that live in the restored optimizer/scheduler state."""
LAYOUT_KEYS = ("cluster.num_nodes", "cluster.gpus_per_node",
               "policy.dtensor_cfg.tensor_parallel_size",
               "policy.dtensor_cfg.context_parallel_size",
               "policy.megatron_cfg.tensor_model_parallel_size",
               "policy.megatron_cfg.pipeline_model_parallel_size",
               "policy.megatron_cfg.context_parallel_size")


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(f"{prefix}.{key}", item))
        return out
    return {prefix: value}


def recipe_record(cfg: RecipeConfig) -> dict[str, dict[str, Any]]:
    """{"fixed": {key: value}, "adjustable": {key: value}} with dotted recipe keys, JSON-able."""
    policy = cfg.policy
    algo = cfg.algorithm
    fixed: dict[str, Any] = {"algorithm": algo, "policy.backend": policy.backend,
                             "policy.model_name": policy.model_name}
    adjustable: dict[str, Any] = {"policy.max_grad_norm": policy.max_grad_norm,
                                  "cluster.num_nodes": cfg.cluster.num_nodes,
                                  "cluster.gpus_per_node": cfg.cluster.gpus_per_node}
    if policy.backend == "megatron":
        mg = policy.megatron_cfg
        for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size",
                    "context_parallel_size"):
            adjustable[f"policy.megatron_cfg.{key}"] = getattr(mg, key)
        optimizer = mg.optimizer.model_dump(mode="json")
        fixed["policy.megatron_cfg.optimizer.optimizer"] = optimizer.pop("optimizer")
        adjustable.update(_flat("policy.megatron_cfg.optimizer", optimizer))
        adjustable.update(_flat("policy.megatron_cfg.scheduler",
                                mg.scheduler.model_dump(mode="json")))
    else:
        dt = policy.dtensor_cfg
        adjustable["policy.dtensor_cfg.tensor_parallel_size"] = dt.tensor_parallel_size
        adjustable["policy.dtensor_cfg.context_parallel_size"] = dt.context_parallel_size
        fixed["policy.optimizer.name"] = policy.optimizer.name
        adjustable.update(_flat("policy.optimizer.kwargs",
                                policy.optimizer.kwargs.model_dump(mode="json")))
        adjustable["policy.scheduler"] = (None if policy.scheduler is None else
                                          [s.model_dump(mode="json") for s in policy.scheduler])
    if policy.quantization is not None:  # the base the adapter trains on (merged export)
        fixed["policy.quantization"] = policy.quantization.model_dump(mode="json")
    lora, lora_key = policy.active_lora, policy.active_lora_key
    fixed.update(_flat(lora_key, lora.model_dump(mode="json")) if lora is not None
                 else {lora_key: None})
    section = cfg.algorithm_config.model_dump(mode="json")
    adjustable.update(_flat(algo, section))
    adjustable.update(_flat("logger", cfg.logger.model_dump(mode="json")))
    checkpointing = cfg.checkpointing.model_dump(mode="json")
    checkpointing.pop("checkpoint_dir", None)
    adjustable.update(_flat("checkpointing", checkpointing))
    return {"fixed": fixed, "adjustable": adjustable}


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"

    @property
    def in_optimizer_state(self) -> bool:
        return self.key.startswith(OPTIMIZER_PREFIXES)

    @property
    def effect(self) -> str:
        """What the resume does about it (for the optimizer: see `apply_recipe_hparams`)."""
        if self.key in LAYOUT_KEYS:
            return "the checkpoint's whole tensors are resharded to the new layout"
        return "in effect from this resume"


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    missing = object()
    return [Change(key, old.get(key, "(not recorded)"), new.get(key, "(not set)"))
            for key in sorted(set(old) | set(new))
            if old.get(key, missing) != new.get(key, missing)]


def fixed_changes(saved: dict[str, Any], ours: dict[str, Any]) -> list[Change]:
    return _changes(saved.get("fixed", {}), ours["fixed"])


def adjustable_changes(saved: dict[str, Any], ours: dict[str, Any]) -> list[Change]:
    return _changes(saved.get("adjustable", {}), ours["adjustable"])


def refusal(path: Any, changes: list[Change]) -> str:
    lines = "\n".join(f"  {change.key}: {change.old!r} in the checkpoint, {change.new!r} in "
                      "the recipe" for change in changes)
    return (f"{path} was written with settings that cannot change on resume:\n{lines}\n"
            "Set them back to resume, or start a new run with another "
            "checkpointing.checkpoint_dir (or delete the old checkpoints)")


def snapshot_hparams(optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """The recipe's hyperparameters as the freshly built optimizer and scheduler hold them,
    taken before a checkpoint's state overwrites them."""
    groups = [{k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
              for group in optimizer.param_groups]
    return {"groups": groups, "scheduler": copy.deepcopy(scheduler.state_dict())}


def apply_recipe_hparams(optimizer: Any, scheduler: Any, fresh: dict[str, Any]) -> float:
    """Put the recipe's hyperparameters into a restored optimizer and replay the recipe's LR
    schedule up to the restored step (the optimizer's moments are kept). The LR now in effect."""
    steps = int(scheduler.last_epoch)
    for group, wanted in zip(optimizer.param_groups, fresh["groups"], strict=True):
        group.update(copy.deepcopy(wanted))
    scheduler.load_state_dict(copy.deepcopy(fresh["scheduler"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
        for _ in range(steps - int(scheduler.last_epoch)):
            scheduler.step()
    return float(optimizer.param_groups[0]["lr"])
