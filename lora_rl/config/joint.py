"""Checks across the recipes of one multi-adapter run (`lora-rl run A.yaml B.yaml`,
`lora-rl validate --joint A.yaml B.yaml`): several LoRA adapters trained on one loaded base.

Each recipe is first validated on its own; these checks then add, to each recipe's result,
what does not fit *together*, located in that recipe's own file and naming the other recipe's
location:
- LR700: what the shared base is loaded and laid out with must agree (`SHARED_KEYS`);
- LR701: no two recipes write the same checkpoint or log directory;
- LR702: what multi-adapter runs are not built for (Megatron, data parallelism, GRPO in several
  processes or with merge-weight vLLM sync, full fine-tuning) is refused rather than half-run;
- LR703: the GRPO recipes that sample with vLLM share one engine (a LoRA slot per adapter), so
  what that engine is started with (`ENGINE_KEYS`) must agree between them.
Everything else may differ: algorithm (SFT, DPO and GRPO together), LoRA rank, alpha, targets,
optimizer, schedule, data, seeds, steps, checkpointing and logging.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lora_rl.config.diagnostics import Diagnostic, KeyPath, Location
from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.schema_errors import locate
from lora_rl.config.validate import ValidationResult

SHARED_KEYS: tuple[str, ...] = (
    "policy.model_name",
    "policy.precision",
    "policy.trust_remote_code",
    "policy.quantization",
    "policy.dtensor_cfg.enabled",
    "policy.megatron_cfg.enabled",
    "policy.dtensor_cfg.tensor_parallel_size",
    "policy.dtensor_cfg.context_parallel_size",
    "policy.dtensor_cfg.sequence_parallel",
    "policy.dtensor_cfg.cpu_offload",
    "policy.dtensor_cfg.activation_checkpointing",
    "policy.megatron_cfg.tensor_model_parallel_size",
    "policy.megatron_cfg.pipeline_model_parallel_size",
    "policy.megatron_cfg.context_parallel_size",
    "cluster.num_nodes",
    "cluster.gpus_per_node",
)
"""The base model, backend, precision and parallel layout: one loaded base serves every
adapter, so every recipe must load and lay it out the same way."""

ENGINE_KEYS: tuple[str, ...] = tuple(
    f"policy.generation.vllm_cfg.{key}" for key in (
        "tensor_parallel_size", "pipeline_parallel_size", "gpu_memory_utilization",
        "max_model_len", "precision", "enforce_eager", "kv_cache_memory_bytes"))
"""What the shared vLLM engine is started with (`generation.vllm_engine`). The adapters' ranks
may differ (the engine takes the largest), and so may their sampling settings, prompts and
`max_total_sequence_length` (each request carries its own; with `max_model_len` null the
engine holds the longest)."""

FIXES: dict[str, str] = {
    "LR700": "give every recipe of the run the same value (the message names the other "
             "recipe's line), or run the recipes separately",
    "LR701": "give each recipe its own checkpointing.checkpoint_dir and logger.log_dir",
    "LR702": "run this recipe on its own (`lora-rl run RECIPE`); multi-adapter runs train LoRA "
             "SFT, DPO and GRPO adapters on the DTensor backend: SFT and DPO in one process or "
             "tensor-parallel (ranks = tensor_parallel_size), GRPO in one process with the "
             "torch generator or with vLLM and lora_weight_sync: split",
    "LR703": "give every GRPO recipe that samples with vLLM the same policy.generation.vllm_cfg "
             "value (the message names the other recipe's line), or sample one of them with "
             "policy.generation.backend: torch",
}


def check_joint(results: Sequence[ValidationResult]) -> None:
    """Add the cross-recipe diagnostics to `results` (in place). Recipes that do not validate
    on their own are left out: their own errors come first."""
    valid = [r for r in results if r.config is not None and not r.errors]
    if len(valid) != len(results) or len(results) < 2:
        return
    found: dict[int, list[Diagnostic]] = {i: [] for i in range(len(results))}
    for index, result in enumerate(results):
        found[index] += _not_built(result)
    _disagreements(results, found)
    _engine_disagreements(results, found)
    _collisions(results, found)
    for index, result in enumerate(results):
        result.diagnostics = [*result.diagnostics, *found[index]]


def uses_vllm(cfg: RecipeConfig) -> bool:
    """Whether `cfg` is a GRPO recipe that samples with vLLM (in a multi-adapter run: from the
    engine those recipes share, `generation.shared_vllm`)."""
    gen = cfg.policy.generation
    return cfg.algorithm == "grpo" and gen is not None and gen.backend == "vllm"


def _value(cfg: RecipeConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _path(key: str) -> KeyPath:
    return tuple(key.split("."))


def _where(result: ValidationResult, key: str) -> Location | None:
    path = _path(key)
    where = locate(result.positions, path, prefer_key=False)
    if where is not None and path not in result.positions:
        where = replace(where, via=f"{key} is not written here: its default applies (shown "
                        "at the nearest written key)")
    return where


def _cite(result: ValidationResult, key: str) -> str:
    """file:line:col of `key` in `result`'s recipe, or that it is the default there."""
    where = _where(result, key)
    return str(where) if where is not None and where.via is None else f"{result.file} (default)"


def _diagnostic(rule: str, result: ValidationResult, key: str, message: str) -> Diagnostic:
    return Diagnostic(rule, "error", message, _path(key), _where(result, key), FIXES[rule])


def _disagreements(results: Sequence[ValidationResult],
                   found: dict[int, list[Diagnostic]]) -> None:
    """LR700, against the first recipe: each differing key is reported in both files."""
    _compare("LR700", SHARED_KEYS, list(enumerate(results)), found,
             "the recipes of one multi-adapter run share one base model, loaded and laid out "
             "once")


def _engine_disagreements(results: Sequence[ValidationResult],
                          found: dict[int, list[Diagnostic]]) -> None:
    """LR703, against the first GRPO recipe that samples with vLLM."""
    _compare("LR703", ENGINE_KEYS,
             [(i, r) for i, r in enumerate(results) if uses_vllm(r.config)], found,
             "the GRPO adapters of one multi-adapter run that sample with vLLM share one "
             "engine, started once, each adapter in a LoRA slot of its own")


def _compare(rule: str, keys: Sequence[str], members: list[tuple[int, ValidationResult]],
             found: dict[int, list[Diagnostic]], why: str) -> None:
    """`rule` for every key of `keys` on which a member differs from the first member:
    reported in both files, each naming the other's location."""
    if len(members) < 2:
        return
    (first_index, first), *others = members
    for index, other in others:
        for key in keys:
            ours, theirs = _value(first.config, key), _value(other.config, key)
            if ours == theirs:
                continue
            found[index].append(_diagnostic(
                rule, other, key,
                f"{key} is {_shown(theirs)} here but {_shown(ours)} in {_cite(first, key)}: "
                f"{why}"))
            found[first_index].append(_diagnostic(
                rule, first, key,
                f"{key} is {_shown(ours)} here but {_shown(theirs)} in {_cite(other, key)}: "
                f"{why}"))


def _shown(value: Any) -> str:
    """A value as YAML/JSON writes it (`true`, `"float32"`, `2`, a section as a mapping)."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return json.dumps(value)


def _outputs(result: ValidationResult) -> list[tuple[str, Path]]:
    cfg = result.config
    outputs = [("logger.log_dir", Path(cfg.logger.log_dir))]
    if cfg.checkpointing.enabled:
        outputs.append(("checkpointing.checkpoint_dir", Path(cfg.checkpointing.checkpoint_dir)))
    return [(key, path.expanduser().resolve()) for key, path in outputs]


def _collisions(results: Sequence[ValidationResult],
                found: dict[int, list[Diagnostic]]) -> None:
    """LR701: a directory written by two recipes of the run (checkpoints would overwrite each
    other, metrics.jsonl would interleave two adapters)."""
    seen: dict[Path, tuple[int, str]] = {}
    for index, result in enumerate(results):
        for key, target in _outputs(result):
            if target not in seen:
                seen[target] = (index, key)
                continue
            first_index, first_key = seen[target]
            if first_index == index:
                continue  # one recipe's own log and checkpoint dirs may coincide, as alone
            owner = results[first_index]
            found[index].append(_diagnostic(
                "LR701", result, key,
                f"{key} is {target}, which {owner.file} also writes ({first_key} at "
                f"{_cite(owner, first_key)}): two adapters would overwrite each other's "
                "checkpoints and interleave their metrics"))


def _not_built(result: ValidationResult) -> list[Diagnostic]:
    """LR702: what multi-adapter runs do not do (yet): refused, never half-run."""
    cfg = result.config
    out = []
    if cfg.policy.megatron_cfg.enabled:
        out.append(_diagnostic("LR702", result, "policy.megatron_cfg.enabled",
                               "multi-adapter runs are built for the DTensor backend only, "
                               "not Megatron"))
    world, tp = cfg.cluster.world_size, cfg.policy.dtensor_cfg.tensor_parallel_size
    if world > 1 and world != tp and not cfg.policy.megatron_cfg.enabled:
        out.append(_diagnostic("LR702", result, "cluster.gpus_per_node",
                               f"multi-adapter runs are tensor-parallel only: this recipe asks "
                               f"for {world} processes with tensor_parallel_size {tp} (data "
                               "parallelism, FSDP over the shared base, is not built for them)"))
    if world > 1 and cfg.algorithm == "grpo":
        out.append(_diagnostic("LR702", result, "cluster.gpus_per_node",
                               f"GRPO adapters of a multi-adapter run generate in one process; "
                               f"this recipe asks for {world} (a tensor-parallel run would "
                               "give each GRPO adapter its own unsharded copy of the base to "
                               "sample from, not the shared one)"))
    generation = cfg.policy.generation
    if uses_vllm(cfg) and generation.lora_weight_sync != "split":
        out.append(_diagnostic("LR702", result, "policy.generation.lora_weight_sync",
                               "the GRPO adapters of a multi-adapter run that sample with "
                               "vLLM share one engine, each adapter in a LoRA slot of its "
                               f"own; lora_weight_sync {generation.lora_weight_sync} would "
                               "merge this adapter into the base weights every adapter reads: "
                               "set lora_weight_sync: split (or backend: torch)"))
    lora = cfg.policy.active_lora
    init = getattr(lora, "init_lora_weights", True)
    if init is not True:
        key = "policy.megatron_cfg.peft" if cfg.policy.megatron_cfg.enabled \
            else "policy.dtensor_cfg.lora_cfg"
        out.append(_diagnostic("LR702", result, f"{key}.init_lora_weights",
                               f"{init} rewrites the base weights that the other adapters "
                               "share"))
    if cfg.policy.active_lora is None and not cfg.policy.megatron_cfg.enabled:
        out.append(_diagnostic("LR702", result, "policy.dtensor_cfg.lora_cfg.enabled",
                               "LoRA is off: full fine-tuning would change the base that the "
                               "other adapters share"))
    return out
