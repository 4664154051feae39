"""Rules on a quantized base (QLoRA): what a 4-/8-bit frozen base can be trained with.

The base is quantized either by the recipe (`policy.quantization`, bitsandbytes) or by the
checkpoint itself (`quantization_config` in the model's config.json, `quant_method:
bitsandbytes`). Measured on this CPU (torch 2.13 CPU, transformers 5.19, bitsandbytes 0.50.2,
peft 0.21): transformers loads NF4 / FP4 / int8 bases on CPU and LoRA trains on top, equal to
PEFT's LoRA on the same base. Only that is built: the DTensor backend in one process, with
LoRA. So the rules refuse the rest: several processes (FSDP2 and tensor parallelism shard
plain parameters, not bitsandbytes' packed `Params4bit` / `Int8Params`), the Megatron backend
(its own layers, no quantized loader), vLLM generation (the engine holds a full-precision
base, so neither split- nor merge-weight sync reproduces the quantized model trained), the
torch generator's merge-weight sync (packed weights cannot hold the merged adapter),
full fine-tuning (quantized weights have no gradient), DoRA and PiSSA/OLoRA (they read or
rewrite the base weight as floats), and quantization methods other than bitsandbytes.
LR109 (lora_dtype must be set) lives with the other LoRA rules in `rules`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.rules import DT, GEN, LORA, MG, Finding, RuleContext, rule

QUANT = "policy.quantization"
LOADABLE_METHODS = ("bitsandbytes",)
"""quant_method values of a pre-quantized checkpoint that the DTensor backend loads."""


def quantized_base(cfg: RecipeConfig, ctx: RuleContext) -> str | None:
    """What quantizes the base the run would train on (for messages), or None."""
    quant = cfg.policy.quantization
    if quant is not None and (quant.load_in_4bit or quant.load_in_8bit):
        return f"{QUANT} loads it in {quant.label}"
    if ctx.model is not None and ctx.model.quantized:
        return f"the checkpoint is quantized ({ctx.model.quantized})"
    return None


def _dtensor_quantized(cfg: RecipeConfig, ctx: RuleContext) -> str | None:
    return None if cfg.policy.megatron_cfg.enabled else quantized_base(cfg, ctx)


@rule("LR160", "error", "policy.quantization must set exactly one of load_in_4bit / load_in_8bit")
def _one_width(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    quant = cfg.policy.quantization
    if quant is None or quant.load_in_4bit != quant.load_in_8bit:
        return
    both = quant.load_in_4bit
    yield Finding(f"{QUANT}.load_in_{'8' if both else '4'}bit",
                  "load_in_4bit and load_in_8bit are both " + ("true" if both else "false"),
                  f"set {QUANT}.load_in_4bit: true (QLoRA's NF4) or load_in_8bit: true"
                  + (", not both" if both else f", or remove {QUANT}"))


@rule("LR161", "error", "policy.quantization exists on the DTensor backend only")
def _megatron(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    if cfg.policy.quantization is not None and cfg.policy.megatron_cfg.enabled:
        yield Finding(QUANT, "the Megatron backend runs, and it builds its own layers from "
                      "full-precision weights (no bitsandbytes loader)",
                      f"remove {QUANT}, or run on the DTensor backend ({MG}.enabled: false, "
                      f"{DT}.enabled: true)")


@rule("LR162", "error", "A quantized base trains with LoRA only")
def _needs_lora(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    what = _dtensor_quantized(cfg, ctx)
    if what and not cfg.policy.dtensor_cfg.lora_cfg.enabled:
        yield Finding(f"{LORA}.enabled", f"{what}, and quantized weights have no gradient: "
                      "full fine-tuning cannot train them",
                      f"set {LORA}.enabled: true (QLoRA), or remove {QUANT}")


@rule("LR163", "error", "A quantized base trains in one process only")
def _one_process(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    what = _dtensor_quantized(cfg, ctx)
    world = cfg.cluster.world_size
    if what and world > 1:
        tp = cfg.policy.dtensor_cfg.tensor_parallel_size
        yield Finding(f"{DT}.tensor_parallel_size" if tp > 1 else "cluster.gpus_per_node",
                      f"{what}, but the run has {world} processes: FSDP2 and tensor "
                      "parallelism shard plain parameters, not bitsandbytes' packed weights",
                      "set cluster.num_nodes: 1, cluster.gpus_per_node: 1 and "
                      f"{DT}.tensor_parallel_size: 1, or remove {QUANT}")


@rule("LR164", "error", "A quantized base cannot generate with vLLM")
def _no_vllm(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    what = _dtensor_quantized(cfg, ctx)
    gen = cfg.policy.generation
    if what and gen is not None and gen.backend == "vllm":
        yield Finding(f"{GEN}.backend", f"{what}; vLLM would sample from a full-precision "
                      "base (split-weight sync) or from merged weights the trainer never "
                      "computed (merge-weight sync), not from the quantized model being trained",
                      f"set {GEN}.backend: torch (it samples from the training model itself)")


@rule("LR168", "error", "A quantized base generates with split weights only")
def _split(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    what = _dtensor_quantized(cfg, ctx)
    gen = cfg.policy.generation
    torch_merge = gen is None or (gen.backend == "torch" and gen.lora_weight_sync == "merge")
    if what and cfg.grpo is not None and torch_merge:
        yield Finding(f"{GEN}.lora_weight_sync", f"{what}; merge-weight sync folds the adapter "
                      "into the base weights before sampling, and packed 4-/8-bit weights "
                      "cannot hold it", f"set {GEN}.lora_weight_sync: split (the torch "
                      "generator then runs base + adapter unmerged, as training does)")


@rule("LR165", "error", "DoRA and PiSSA/OLoRA need a full-precision base")
def _variants(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    what = _dtensor_quantized(cfg, ctx)
    lora = cfg.policy.dtensor_cfg.lora_cfg
    if not what or not lora.enabled:
        return
    if lora.use_dora:
        yield Finding(f"{LORA}.use_dora", f"{what}; DoRA normalises the rows of W + scale * B A "
                      "and needs W as floats", f"set {LORA}.use_dora: false, or remove {QUANT}")
    if lora.init_lora_weights is not True:
        yield Finding(f"{LORA}.init_lora_weights", f"{what}; {lora.init_lora_weights} rewrites "
                      "the base weight to a residual, which a quantized weight cannot hold",
                      f"set {LORA}.init_lora_weights: true, or remove {QUANT}")


@rule("LR166", "error", "The DTensor backend loads bitsandbytes-quantized checkpoints only")
def _method(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    method = ctx.model.quantized if ctx.model is not None else None
    if method and method not in LOADABLE_METHODS and not cfg.policy.megatron_cfg.enabled:
        yield Finding("policy.model_name", f"the checkpoint is quantized with {method}; lora-rl "
                      "trains LoRA on bitsandbytes-quantized bases only (their CPU kernels are "
                      "the ones measured)",
                      f"use the full-precision checkpoint, with {QUANT}.load_in_4bit: true to "
                      "quantize it while loading")


@rule("LR167", "warning", "policy.quantization requires the quant extra (bitsandbytes)",
      environment=True)
def _installed(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    if cfg.policy.quantization is not None and importlib.util.find_spec("bitsandbytes") is None:
        yield Finding(QUANT, "policy.quantization is set but bitsandbytes is not installed",
                      "pip install -e '.[quant]'")
