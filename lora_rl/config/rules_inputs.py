"""Rules for what `run` needs besides a well-formed recipe (LR600-LR649).

Two kinds, kept apart so a verdict means the same on every machine:
- environment rules (`environment=True`): facts about this machine — a package that is not
  installed, an input path that does not exist here. A warning in `validate` (CI has neither the
  model nor the adapter), an error under `validate --check-env` and in `run`, before anything
  loads;
- recipe rules: the settings disagree with each other, whatever machine reads them.

Every check a backend used to make on the recipe after loading the model lives here, so
`validate` reports it with a location and a fix.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

from lora_rl.config.policy import SchedulerMilestones, SchedulerStep
from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.rules import MG, Finding, RuleContext, rule
from lora_rl.interop.adapter_fit import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    adapter_fit_problem,
    lora_scale,
)

# ---- packages ------------------------------------------------------------------------------


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing or broken
        return False


TRAIN_MODULES = ("torch", "transformers", "safetensors")
"""What `run` imports on every backend (the `train` extra)."""


@rule("LR601", "warning", "Training needs the train extra (torch, transformers, safetensors)",
      environment=True)
def _train_extra(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    missing = [m for m in TRAIN_MODULES if not _installed(m)]
    if missing:
        yield Finding("", f"this machine cannot train: {', '.join(missing)} "
                      "not installed (validate needs only the base install; run needs these)",
                      "pip install torch (pinned, see README) and -e '.[train]'")


@rule("LR602", "warning", "The Megatron backend needs the megatron extra (megatron-core)",
      environment=True)
def _megatron_extra(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    if cfg.policy.megatron_cfg.enabled and not _installed("megatron.core"):
        yield Finding(f"{MG}.enabled", "megatron_cfg.enabled is true but megatron-core is not "
                      "installed", "pip install -e '.[megatron]', or train with dtensor_cfg")


# ---- input paths ---------------------------------------------------------------------------


def _exists(value: str, kind: str = "any") -> bool:
    try:
        path = Path(value).expanduser()
        return path.is_dir() if kind == "dir" else path.exists()
    except (OSError, ValueError, RuntimeError):  # too long a name, `~nosuchuser/...`
        return False


@rule("LR610", "warning", "policy.model_name is a hub id; `run` needs a local directory",
      environment=True)
def _hub_model(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    from lora_rl.model_source import BUILT_MODELS, TINY_MODEL_NAME, local_model_dir, names_a_path

    name = cfg.policy.model_name
    if name == TINY_MODEL_NAME or names_a_path(name):
        return
    if name in BUILT_MODELS:
        if local_model_dir(name) is None:
            yield Finding("policy.model_name", f"'{name}' is not built on this machine yet",
                          f"run `{BUILT_MODELS[name][1]}` once (it goes to lora-rl's cache)")
        return
    yield Finding("policy.model_name", f"'{name}' is not a local directory and lora-rl "
                  "downloads nothing: `run` needs the model on disk",
                  f"download it (`huggingface-cli download {name} --local-dir models/x`) and "
                  "set policy.model_name: models/x")


@rule("LR611", "warning", "The local model directory does not exist", environment=True)
def _model_dir_exists(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    from lora_rl.model_source import names_a_path

    name = cfg.policy.model_name
    if names_a_path(name) and not _exists(name, "dir"):
        what = "is not a directory" if _exists(name) else "does not exist"
        yield Finding("policy.model_name", f"model directory {name} {what} here",
                      "point policy.model_name at a Hugging Face model directory "
                      "(config.json and safetensors weights); relative paths start at the "
                      "working directory")


@rule("LR612", "warning", "init_adapter_path is not a PEFT adapter directory (yet)",
      environment=True)
def _adapter_exists(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    path = cfg.policy.init_adapter_path
    if not path or _adapter_dir(path):
        return
    what = "does not exist" if not _exists(path) else \
        f"has no {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
    yield Finding("policy.init_adapter_path", f"{path} {what} here: `run` starts from this "
                  "adapter", "produce it first: run the SFT recipe this one continues (e.g. "
                  "`lora-rl run recipes/sft-tiny-dtensor-lora.yaml`), then `lora-rl export "
                  f"--checkpoint <its checkpointing.checkpoint_dir> --format peft --out {path}`"
                  "; or remove init_adapter_path to start from fresh LoRA weights")


def _adapter_dir(path: str) -> bool:
    return _exists(str(Path(path) / ADAPTER_CONFIG)) and _exists(str(Path(path) / ADAPTER_WEIGHTS))


def _adapter_config(path: str) -> dict | None:
    try:
        data = json.loads((Path(path) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@rule("LR613", "error", "The init adapter's rank and alpha must match the recipe's LoRA")
def _adapter_matches(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    path, lora = cfg.policy.init_adapter_path, cfg.policy.active_lora
    if not path or lora is None or not _adapter_dir(path):
        return
    config = _adapter_config(path)
    if config is None:
        return
    key = cfg.policy.active_lora_key
    problem = adapter_fit_problem(config, lora.dim,
                                  lora_scale(lora.dim, lora.alpha, lora.use_rslora))
    if problem:
        r, alpha = config.get("r"), config.get("lora_alpha")
        rslora = str(config.get("use_rslora", False) is True).lower()
        yield Finding(f"{key}.dim", f"the adapter at {path} does not fit: {problem}",
                      f"set {key}.dim: {r}, {key}.alpha: {alpha} and {key}.use_rslora: "
                      f"{rslora} to continue from it")


# ---- settings that contradict each other --------------------------------------------------


@rule("LR620", "error", "init_adapter_path needs LoRA enabled on the backend that runs")
def _adapter_needs_lora(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    if cfg.policy.init_adapter_path and cfg.policy.active_lora is None:
        key = f"{cfg.policy.active_lora_key}.enabled"
        yield Finding("policy.init_adapter_path", "init_adapter_path loads a LoRA adapter, but "
                      "LoRA is not enabled on the backend that runs",
                      f"set {key}: true, or remove policy.init_adapter_path")


@rule("LR621", "error", "megatron_cfg.pipeline_dtype must equal policy.precision")
def _pipeline_dtype(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    mg = cfg.policy.megatron_cfg
    if mg.enabled and mg.pipeline_dtype not in (None, cfg.policy.precision):
        yield Finding(f"{MG}.pipeline_dtype", f"pipeline_dtype is {mg.pipeline_dtype} but "
                      f"policy.precision is {cfg.policy.precision}: pipeline stages exchange "
                      "activations in the model's dtype",
                      f"leave {MG}.pipeline_dtype null, or set it to {cfg.policy.precision}")


SCHEDULER_KWARGS: dict[str, dict[str, type]] = {
    "torch.optim.lr_scheduler.LinearLR": {"start_factor": float, "end_factor": float,
                                          "total_iters": int},
    "torch.optim.lr_scheduler.ConstantLR": {"factor": float, "total_iters": int},
    "torch.optim.lr_scheduler.CosineAnnealingLR": {"T_max": int, "eta_min": float},
}
"""The keyword arguments lora-rl passes to each torch scheduler, with their types (besides the
optimizer; `last_epoch` is resume's business). A test checks them against torch's signatures."""

REQUIRED_SCHEDULER_KWARGS = {"torch.optim.lr_scheduler.CosineAnnealingLR": ("T_max",)}


def _scheduler_steps(cfg: RecipeConfig) -> list[tuple[int, SchedulerStep]]:
    return [(i, s) for i, s in enumerate(cfg.policy.scheduler or [])
            if isinstance(s, SchedulerStep)]


@rule("LR630", "error", "Scheduler kwargs must be arguments of that scheduler")
def _scheduler_kwargs(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    if cfg.policy.megatron_cfg.enabled:
        return  # Megatron schedules with megatron_cfg.scheduler
    for index, step in _scheduler_steps(cfg):
        known = SCHEDULER_KWARGS[step.name]
        short = step.name.rsplit(".", 1)[-1]
        where = f"policy.scheduler.{index}.kwargs"
        for key, value in step.kwargs.items():
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                yield Finding(f"{where}.{key}", f"{short} has no argument '{key}'; it takes "
                              f"{', '.join(known)}", f"{hint}use one of {', '.join(known)}")
            elif known[key] is int and not isinstance(value, int):
                yield Finding(f"{where}.{key}", f"{short}'s {key} counts steps: it must be a "
                              f"whole number, not {value!r}", f"set {key}: {int(value)}")
        for key in REQUIRED_SCHEDULER_KWARGS.get(step.name, ()):
            if key not in step.kwargs:
                yield Finding(where, f"{short} needs {key}", f"add {key}: <steps> to {where}")


@rule("LR631", "error", "A scheduler chain needs one milestone fewer than schedulers")
def _scheduler_milestones(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    if cfg.policy.megatron_cfg.enabled or not cfg.policy.scheduler:
        return
    steps = cfg.policy.scheduler
    count = len(_scheduler_steps(cfg))
    marks = [(i, s) for i, s in enumerate(steps) if isinstance(s, SchedulerMilestones)]
    milestones = [m for _, s in marks for m in s.milestones]
    if count == 1 and not milestones:
        return
    key = f"policy.scheduler.{marks[-1][0]}.milestones" if marks else "policy.scheduler"
    if len(milestones) != count - 1:
        yield Finding(key, f"policy.scheduler chains {count} schedulers with "
                      f"{len(milestones)} milestones; SequentialLR switches scheduler at each "
                      "milestone, so it needs one fewer", f"give {max(count - 1, 0)} "
                      "milestone(s) in a final `- milestones: [...]` entry")
    elif milestones != sorted(set(milestones)):
        yield Finding(key, f"milestones {milestones} are not strictly increasing",
                      "list the switch steps in increasing order")


@rule("LR640", "warning", "logprob_batch_size other than train_micro_batch_size has no effect")
def _logprob_batch(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    size, micro = cfg.policy.logprob_batch_size, cfg.policy.train_micro_batch_size
    if size is not None and size != micro and (cfg.grpo or cfg.dpo):
        yield Finding("policy.logprob_batch_size", f"logprob_batch_size is {size}, but lora-rl "
                      "computes log-probabilities (old policy, reference) per train micro-batch "
                      f"of {micro}", "remove it, or set it to ${policy.train_micro_batch_size}")
