"""Rules on the model family x backend combination (when the model's config.json is known).

The supported combinations come from `lora_rl.architecture`, the same table the backends build
their layouts from, so what `validate` accepts is what `run` can map.
"""

from __future__ import annotations

from collections.abc import Iterator

from lora_rl.architecture import supported_families
from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.rules import Finding, RuleContext, layout, rule

_MODEL = "policy.model_name"
_TP = "policy.dtensor_cfg.tensor_parallel_size"


@rule("LR410", "error", "The model family must be supported by the chosen backend")
def _family_on_backend(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    model = ctx.model
    if model is None:
        return
    backend = cfg.policy.backend
    arch = model.architecture
    if arch is None:
        if backend == "megatron":
            yield Finding(_MODEL, f"the Megatron backend maps only the families it knows: "
                          f"{model.architecture_problem}", "use the DTensor backend (it runs "
                          "any Hugging Face decoder) or a supported family: "
                          + ", ".join(supported_families("megatron")))
        return
    problem = arch.unsupported(backend)  # type: ignore[arg-type]
    if problem:
        other = "dtensor" if backend == "megatron" else "megatron"
        yield Finding(_MODEL, problem, f"train this model with the {other} backend "
                      f"(policy.{other}_cfg.enabled: true), or pick a supported family")


@rule("LR411", "error", "DTensor tensor parallelism needs a family with a tensor-parallel plan")
def _family_tensor_parallel(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    model = ctx.model
    tp = cfg.policy.dtensor_cfg.tensor_parallel_size
    if model is None or cfg.policy.backend != "dtensor" or tp <= 1:
        return
    arch = model.architecture
    if arch is None:
        yield Finding(_TP, f"tensor_parallel_size {tp} needs the family's tensor-parallel plan: "
                      f"{model.architecture_problem}", "set tensor_parallel_size: 1 (FSDP2 "
                      "data parallelism works for any decoder)")
        return
    problem = arch.unsupported("dtensor", tensor_parallel=tp)
    if problem:
        yield Finding(_TP, problem, "set tensor_parallel_size: 1 and scale with data "
                      "parallelism (FSDP2) instead")


@rule("LR412", "warning", "LoRA on a model family lora-rl has no description of")
def _unknown_family(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    model = ctx.model
    if model is None or model.architecture is not None or cfg.policy.backend != "dtensor" \
            or cfg.policy.active_lora is None:
        return
    yield Finding(_MODEL, f"{model.architecture_problem}; the DTensor backend adapts its "
                  "nn.Linear layers generically, but LoRA's targets cannot be checked before "
                  "the run and the family is untested", "read the adapted modules the run "
                  "prints first, or use a supported family")


@rule("LR413", "error", "LoRA dropout cannot apply to MoE expert parameters")
def _expert_dropout(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    model = ctx.model
    lora = cfg.policy.active_lora
    if model is None or model.architecture is None or lora is None or lora.dropout == 0 \
            or cfg.policy.backend != "dtensor" or not model.architecture.expert_names():
        return
    import warnings

    from lora_rl.lora.matching import LoraMatchError, match_names

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            chosen = match_names(model.architecture.linear_names("dtensor"), lora)
    except LoraMatchError:
        return  # LR401 reports it
    experts = [n for n in chosen if ".experts." in n]
    if experts:
        yield Finding("policy.dtensor_cfg.lora_cfg.dropout", f"LoRA adapts {len(experts)} MoE "
                      f"expert parameter(s) (e.g. {experts[0]}), whose update is merged into the "
                      "expert weights on every forward, so no dropout can apply to its input "
                      "(PEFT refuses it too)", "set dropout: 0, or leave the experts out "
                      "(match_all_linear: false, target_modules: [q_proj, k_proj, v_proj, "
                      "o_proj])")


@rule("LR414", "error", "Megatron expert parallelism needs a MoE model whose experts and "
      "data-parallel (x sequence-parallel) ranks it divides")
def _expert_parallel(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    mg = cfg.policy.megatron_cfg
    ep = mg.expert_model_parallel_size
    if ep <= 1 or not mg.enabled:
        return
    key = "policy.megatron_cfg.expert_model_parallel_size"
    lay = layout(cfg)
    # Experts are never split by tensor parallelism, so under sequence parallelism (each tp
    # rank routes its own tokens) the tp ranks of a replica can hold different experts too.
    tp = lay.tp if mg.sequence_parallel else 1
    if lay.world % lay.model_parallel == 0 and (lay.dp * tp) % ep:
        ranks = f"data-parallel {lay.dp}" + (f" x tensor-parallel {tp}" if tp > 1 else "")
        yield Finding(key, f"expert_model_parallel_size {ep} does not divide the ranks that can "
                      f"hold different experts ({ranks}; world {lay.world} / tp x pp "
                      f"{lay.model_parallel} is the data-parallel size)",
                      "pick an expert_model_parallel_size that divides them")
    arch = ctx.model.architecture if ctx.model is not None else None
    if arch is None:
        return
    if not arch.is_moe:
        yield Finding(key, f"expert_model_parallel_size is {ep}, but model_type "
                      f"{arch.model_type!r} has no MoE layers", "set it to 1")
    elif arch.dims.experts % ep:
        yield Finding(key, f"expert_model_parallel_size {ep} does not divide the model's "
                      f"{arch.dims.experts} experts per layer", "pick a divisor of the experts")


@rule("LR415", "error", "MoE models need sequence parallelism under Megatron tensor parallelism")
def _moe_sequence_parallel(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    mg = cfg.policy.megatron_cfg
    arch = ctx.model.architecture if ctx.model is not None else None
    if not mg.enabled or mg.tensor_model_parallel_size <= 1 or mg.sequence_parallel \
            or arch is None or not arch.is_moe:
        return
    yield Finding("policy.megatron_cfg.sequence_parallel",
                  f"model_type {arch.model_type!r} has MoE layers, which megatron-core trains "
                  f"with tensor_model_parallel_size {mg.tensor_model_parallel_size} only under "
                  "sequence parallelism (each rank routes its part of the sequence)",
                  "set policy.megatron_cfg.sequence_parallel: true, or "
                  "tensor_model_parallel_size: 1")
