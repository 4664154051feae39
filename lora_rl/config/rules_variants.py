"""Rules on the LoRA variants (rsLoRA, LoRA+, DoRA, PiSSA/OLoRA): what each cannot be combined
with.

rsLoRA and LoRA+ (`lora_plus_lr_ratio`) exist in both LoRA blocks, without restrictions.

DoRA (`use_dora`) exists in both blocks, with one layer (`lora_rl.lora.layer.LoraLinear`) and the
torch path only: there is no Triton DoRA kernel (DTensor), the magnitude's row norm needs whole
rows (DTensor's tensor parallelism splits them; Megatron's row-parallel modules sum the row
norms over their ranks), and vLLM cannot serve a DoRA adapter in split-weight mode (NeMo RL's
adapter refit rejects `use_dora` too), so DoRA syncs merged weights. On Megatron it adapts
fused modules only: canonical targets (one adapter per projection) and MoE expert linears have
no DoRA (LR169).

PiSSA/OLoRA (`init_lora_weights: pissa|olora`, both blocks) rewrite the base weights to a
residual at init, so everything that pairs the adapter with the *original* base is refused:
vLLM's split-weight sync (the engine holds the original base; the torch generator samples from
the training module itself, or on Megatron from an HF copy that recomputes the init, so its
split mode is fine), `init_adapter_path` (an adapter trained on another base), DoRA (not built
together) and tensor parallelism on either backend (the factorisation and the disabled layer,
the reference policy, need whole weights). On Megatron the init is PEFT's per-module one, so it
needs canonical targets for the fused modules (`linear_q`, `linear_k`, `linear_v`,
`linear_fc1_gate`, `linear_fc1_up`: one adapter per projection, factorised from its rows of the
fused weight) beside the unfused `linear_proj`/`linear_fc2`; fused `linear_qkv`/`linear_fc1`
targets (one A shared by the projections) and MoE expert linears are refused (LR159).
"""

from __future__ import annotations

from collections.abc import Iterator

from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig
from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.rules import DT, GEN, LORA, MG, PEFT, Finding, RuleContext, rule


def _dtensor_lora(cfg: RecipeConfig) -> DTensorLoraConfig | None:
    lora = cfg.policy.active_lora
    return lora if isinstance(lora, DTensorLoraConfig) else None


def _lora_key(cfg: RecipeConfig) -> str:
    """The dotted key of the LoRA block that runs."""
    return PEFT if cfg.policy.megatron_cfg.enabled else LORA


@rule("LR150", "error", "use_dora: true has no Triton kernel")
def _dora_triton(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    lora = _dtensor_lora(cfg)
    if lora is not None and lora.use_dora and lora.use_triton:
        yield Finding(f"{LORA}.use_triton", "DoRA runs on the torch path only, but use_triton "
                      "is true (use_triton defaults to true)",
                      f"set {LORA}.use_triton: false")


@rule("LR151", "error", "DTensor use_dora: true is not supported with tensor_parallel_size > 1")
def _dora_tp(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    lora = _dtensor_lora(cfg)
    tp = cfg.policy.dtensor_cfg.tensor_parallel_size
    if lora is not None and lora.use_dora and tp > 1:
        yield Finding(f"{LORA}.use_dora", "DoRA's magnitude needs the norm of whole weight "
                      f"rows, which DTensor tensor parallelism splits (tensor_parallel_size {tp}; "
                      "the Megatron backend sums the row norms over its ranks)",
                      f"set {DT}.tensor_parallel_size: 1 (use data parallelism), or "
                      f"{LORA}.use_dora: false")


@rule("LR152", "error", "use_dora: true cannot sync split weights to vLLM")
def _dora_split(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    lora = cfg.policy.active_lora
    gen = cfg.policy.generation
    if lora is not None and lora.use_dora and gen is not None \
            and gen.lora_weight_sync == "split":
        yield Finding(f"{GEN}.lora_weight_sync", "vLLM cannot serve a DoRA adapter beside the "
                      "base weights (split-weight sync); the magnitude must be merged",
                      f"set {GEN}.lora_weight_sync: merge, or {_lora_key(cfg)}.use_dora: false")


@rule("LR153", "error", "use_dora: true applies LoRA dropout to the input only")
def _dora_dropout(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    lora = cfg.policy.active_lora
    if lora is not None and lora.use_dora and lora.dropout > 0 \
            and lora.dropout_position == "post":
        key = _lora_key(cfg)
        yield Finding(f"{key}.dropout_position", "DoRA drops the adapter's input (as PEFT), "
                      "but dropout_position is post", f"set {key}.dropout_position: pre")


@rule("LR154", "warning", "lora_plus_lr_ratio below 1 trains B slower than A")
def _lora_plus_ratio(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    lora = cfg.policy.active_lora
    ratio = lora.lora_plus_lr_ratio if lora is not None else None
    if ratio is not None and ratio < 1:
        key = _lora_key(cfg)
        yield Finding(f"{key}.lora_plus_lr_ratio", f"lora_plus_lr_ratio {ratio:g} gives B a "
                      "lower learning rate than A, the opposite of LoRA+ (the paper uses 2-16)",
                      f"set {key}.lora_plus_lr_ratio to 2-16, or null for one learning rate")


@rule("LR169", "error", "Megatron use_dora: true adapts fused modules only")
def _dora_megatron_modules(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    from lora_rl.lora.matching import ModuleMatcher, select

    lora = cfg.policy.active_lora
    if not isinstance(lora, MegatronPeftConfig) or not lora.use_dora:
        return
    # With PiSSA/OLoRA the targets are canonical by LR159: LR157 refuses the pair instead.
    if ModuleMatcher.from_config(lora).canonical and lora.init_lora_weights is True:
        yield Finding(f"{PEFT}.target_modules", "DoRA on Megatron is built for the fused "
                      "modules (linear_qkv, linear_fc1 with one adapter each), not for canonical "
                      "targets (one adapter per projection)",
                      f"name the fused modules (linear_qkv, linear_proj, linear_fc1, linear_fc2) "
                      f"in {PEFT}.target_modules, or set {PEFT}.use_dora: false")
    names = ctx.model.linear_names("megatron") if ctx.model is not None else []
    if any(".mlp.experts." in name for name in select(names, lora)):
        yield Finding(f"{PEFT}.use_dora", f"{ctx.model.model_type} is a MoE model, and DoRA "
                      "on its expert linears has no PEFT layout (the DTensor backend refuses it "
                      "too)", f"set {PEFT}.use_dora: false, or leave the experts out "
                      f"({PEFT}.target_modules: [linear_qkv, linear_proj])")


def _residual_init(cfg: RecipeConfig) -> str | None:
    """`pissa`/`olora` when the LoRA that runs (either block) starts from a residual init."""
    lora = cfg.policy.active_lora
    init = getattr(lora, "init_lora_weights", True) if lora is not None else True
    return None if init is True else init


@rule("LR155", "error", "init_lora_weights pissa/olora cannot sync split weights to vLLM")
def _residual_split(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    init = _residual_init(cfg)
    gen = cfg.policy.generation
    if init is not None and gen is not None and gen.backend == "vllm" \
            and gen.lora_weight_sync == "split":
        yield Finding(f"{GEN}.lora_weight_sync", f"{init} rewrites the base weights to a "
                      "residual, but split-weight sync serves the adapter on vLLM's original "
                      "base, which would sample from another model",
                      f"set {GEN}.lora_weight_sync: merge, or "
                      f"{_lora_key(cfg)}.init_lora_weights: true")


@rule("LR156", "error", "init_lora_weights pissa/olora cannot start from init_adapter_path")
def _residual_init_adapter(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    init = _residual_init(cfg)
    if init is not None and cfg.policy.init_adapter_path:
        yield Finding("policy.init_adapter_path", f"{init} takes A and B from the base weights "
                      "and rewrites the base; a loaded adapter would replace that init on a "
                      "base it was not trained with",
                      f"remove policy.init_adapter_path, or set "
                      f"{_lora_key(cfg)}.init_lora_weights: true")


@rule("LR157", "error", "init_lora_weights pissa/olora is not supported with use_dora")
def _residual_dora(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    init = _residual_init(cfg)
    if init is not None and cfg.policy.active_lora.use_dora:
        key = _lora_key(cfg)
        yield Finding(f"{key}.init_lora_weights", f"{init} together with DoRA is not built "
                      "on either backend (nor its conversion to a plain LoRA for export)",
                      f"set {key}.init_lora_weights: true, or {key}.use_dora: false")


@rule("LR158", "error", "init_lora_weights pissa/olora is not supported with "
      "tensor parallelism")
def _residual_tp(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    init = _residual_init(cfg)
    if init is None:
        return
    why = (f"{init} factorises whole weights, and its reference policy (adapters off) adds "
           "the init back with whole-weight factors, which tensor parallelism splits")
    if cfg.policy.megatron_cfg.enabled:
        tp = cfg.policy.megatron_cfg.tensor_model_parallel_size
        if tp > 1:
            yield Finding(f"{PEFT}.init_lora_weights", f"{why} (tensor_model_parallel_size "
                          f"{tp}; not built)",
                          f"set {MG}.tensor_model_parallel_size: 1 (use data or pipeline "
                          f"parallelism), or {PEFT}.init_lora_weights: true")
        return
    tp = cfg.policy.dtensor_cfg.tensor_parallel_size
    if tp > 1:
        yield Finding(f"{LORA}.init_lora_weights", f"{why} (tensor_parallel_size {tp})",
                      f"set {DT}.tensor_parallel_size: 1 (use data parallelism), or "
                      f"{LORA}.init_lora_weights: true")


_MEGATRON_LINEARS = ("decoder.layers.0.self_attention.linear_qkv",
                     "decoder.layers.0.self_attention.linear_proj",
                     "decoder.layers.0.mlp.linear_fc1", "decoder.layers.0.mlp.linear_fc2")
"""One dense layer's linears, to see which a target list adapts when no model is loaded."""


@rule("LR159", "error", "Megatron init_lora_weights pissa/olora needs canonical targets")
def _residual_megatron(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    from lora_rl.lora.matching import CANONICAL_PARTS, LoraMatchError, select, short_name

    if not cfg.policy.megatron_cfg.enabled:
        return
    dt_init = cfg.policy.dtensor_cfg.lora_cfg.init_lora_weights
    if dt_init is not True:
        yield Finding(f"{LORA}.init_lora_weights", f"the Megatron backend runs, which reads "
                      f"its own LoRA block, so the DTensor block's {dt_init} does nothing",
                      f"set {LORA}.init_lora_weights: true, and {PEFT}.init_lora_weights: "
                      f"{dt_init} (with canonical targets)")
    init = _residual_init(cfg)
    lora = cfg.policy.active_lora
    if init is None or not isinstance(lora, MegatronPeftConfig):
        return
    names = ctx.model.linear_names("megatron") if ctx.model is not None \
        else list(_MEGATRON_LINEARS)
    try:
        adapted = select(names, lora)
    except LoraMatchError:
        return  # the matcher's own rule says what is wrong with the targets
    fused = [f for f in CANONICAL_PARTS if any(short_name(n) == f for n in adapted)]
    if fused:
        canonical = [part for f in fused for part in CANONICAL_PARTS[f]]
        yield Finding(f"{PEFT}.target_modules", f"{init} factorises each PEFT module's weight "
                      f"(q, k, v, gate, up separately), but a fused {' / '.join(fused)} "
                      "adapter has one A shared by its projections, which no per-module "
                      "factorisation gives",
                      f"name the projections instead (canonical LoRA): {PEFT}.target_modules: "
                      f"[{', '.join(canonical)}, linear_proj, linear_fc2], or set "
                      f"{PEFT}.init_lora_weights: true")
    if any(".mlp.experts." in name for name in adapted):
        yield Finding(f"{PEFT}.init_lora_weights", f"{ctx.model.model_type} is a MoE model, "
                      f"and {init} on its expert linears is not built (the DTensor backend "
                      "refuses it too)",
                      f"set {PEFT}.init_lora_weights: true, or leave the experts out "
                      f"({PEFT}.target_modules: [linear_q, linear_k, linear_v, linear_proj])")
