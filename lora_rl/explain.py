"""`lora-rl explain`: what a valid recipe will do, in derived numbers, before anything runs."""

from __future__ import annotations

import importlib.util

from rich.console import Console
from rich.table import Table

from lora_rl.config.lora import AnyLoraConfig
from lora_rl.config.model_facts import ModelFacts
from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.rules import layout
from lora_rl.config.validate import ValidationResult


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _variant_rows(lora: AnyLoraConfig,
                  lr: float | None) -> list[tuple[str, str]]:
    """DoRA and LoRA+ (both blocks)."""
    rows = []
    if lora.use_dora:
        rows.append(("DoRA", "a trained magnitude per output row; vLLM gets merged weights"))
    ratio = lora.lora_plus_lr_ratio
    if ratio is not None:
        rates = f"A {lr:g}, B {lr * ratio:g}" if lr is not None else "B at A's"
        rows.append(("LoRA+ learning rates", f"{rates} (x{ratio:g})"))
    return rows


def lora_rows(cfg: RecipeConfig) -> list[tuple[str, str]]:
    lora = cfg.policy.active_lora
    if lora is None:
        return [("LoRA", "off: full fine-tuning of every parameter")]
    rows = [("LoRA block", cfg.policy.active_lora_key),
            ("rank / alpha", f"{lora.dim} / {lora.alpha:g}"),
            _scale_row(lora),
            ("dropout", f"{lora.dropout:g} ({lora.dropout_position})")]
    if cfg.policy.megatron_cfg.enabled:
        peft = cfg.policy.megatron_cfg.peft
        rows.append(("targets", ", ".join(peft.target_modules or []) or
                     "all four: linear_qkv, linear_proj, linear_fc1, linear_fc2"))
        if peft.exclude_modules:
            rows.append(("excluded", ", ".join(peft.exclude_modules)))
        from lora_rl.lora.matching import ModuleMatcher

        rows.append(("fused qkv / fc1", "canonical: one adapter per projection"
                     if ModuleMatcher.from_config(peft).canonical
                     else "one shared A per fused module"))
        if peft.init_lora_weights is True:
            rows.append(("A / B init", f"{peft.lora_A_init_method} / "
                         f"{peft.lora_B_init_method}"))
        else:
            rows.append(("init", _residual_row(peft.init_lora_weights, peft.dim)))
        rows.append(("adapter dtype", peft.lora_dtype or "follows the base layer"))
        rows += _variant_rows(peft, cfg.policy.megatron_cfg.optimizer.lr)
    else:
        dt_lora = cfg.policy.dtensor_cfg.lora_cfg
        targets = "every linear layer (and MoE expert parameter) except lm_head" \
            if dt_lora.match_all_linear else \
            ", ".join(dt_lora.target_modules) or "every linear layer except the excluded"
        rows.append(("targets", targets))
        if dt_lora.exclude_modules:
            rows.append(("excluded", ", ".join(dt_lora.exclude_modules)))
        init = dt_lora.init_lora_weights
        if init is True:
            rows.append(("A init", dt_lora.lora_A_init))
        else:
            rows.append(("init", _residual_row(init, dt_lora.dim)))
        rows += _variant_rows(dt_lora, cfg.policy.optimizer.kwargs.lr
                              if cfg.policy.optimizer is not None else None)
        if dt_lora.use_triton:
            kernel = "Triton fused kernel" if _cuda_available() else \
                "torch path (use_triton is set, but Triton kernels need CUDA; none here)"
        else:
            kernel = "torch path (use_triton: false)"
        rows.append(("kernel", kernel))
    return rows


def _residual_row(init: str, dim: int) -> str:
    how = "SVD" if init == "pissa" else "QR"
    return (f"{init}: A, B from each adapted weight's {how} (each projection's own rows of a "
            "fused weight on Megatron); the base is rewritten to the residual; PEFT export "
            f"is a plain LoRA of rank {2 * dim}")


def adapted_group_rows(cfg: RecipeConfig, model: ModelFacts | None) -> list[tuple[str, str]]:
    """Per module group (attention, mlp, experts, router, output): how many modules (MoE
    expert parameters on DTensor, expert linears on Megatron) get an adapter and their
    trainable parameters; only when the model's config.json is known."""
    lora = cfg.policy.active_lora
    if model is None or model.architecture is None or lora is None:
        return []
    import warnings

    from lora_rl.lora.matching import LoraMatchError, match_names

    arch = model.architecture
    backend = cfg.policy.backend
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            chosen = match_names(arch.linear_names(backend), lora)
    except LoraMatchError:
        return []
    groups: dict[str, list[int]] = {}
    for name in chosen:
        entry = groups.setdefault(arch.group_of(name), [0, 0])
        entry[0] += 1
        entry[1] += arch.adapter_parameters(name, lora.dim)
    rows = []
    for group in ("attention", "mlp", "experts", "router", "output"):
        count, params = groups.get(group, (0, 0))
        unit = "module(s)"
        if group == "experts":
            unit = "expert linear(s) (linear_fc1 / linear_fc2 of each expert)" \
                if backend == "megatron" else "expert parameter(s), one adapter per expert"
        rows.append((f"adapted: {group}", f"{count} {unit}, {params:,} trainable parameters"
                     if count else "none"))
    total = sum(p for _, p in groups.values())
    rows.append(("trainable (LoRA)", f"{total:,} parameters"))
    return rows


def run_rows(cfg: RecipeConfig) -> list[tuple[str, str]]:
    lay = layout(cfg)
    p = cfg.policy
    algo = cfg.algorithm_config
    accumulation = p.train_global_batch_size // max(1, p.train_micro_batch_size * lay.dp)
    rows = [
        ("algorithm", cfg.algorithm), ("backend", p.backend), ("model", p.model_name),
        ("precision", p.precision),
        ("processes", f"{lay.world} = dp {lay.dp} x tp {lay.tp} x pp {lay.pp} x cp {lay.cp}"),
        ("batch", f"global {p.train_global_batch_size} = micro {p.train_micro_batch_size} x dp "
                  f"{lay.dp} x {accumulation} accumulation step(s)"),
        ("optimizer steps", f"at most {algo.max_num_steps} ({algo.max_num_epochs} epoch(s) cap)"),
    ]
    if cfg.grpo:
        gen = p.generation
        rows.append(("rollouts/step", f"{cfg.grpo.num_prompts_per_step} prompts x "
                     f"{cfg.grpo.num_generations_per_prompt} = "
                     f"{cfg.grpo.num_prompts_per_step * cfg.grpo.num_generations_per_prompt}"))
        if gen:
            rows.append(("generator", f"{gen.backend}, LoRA sync {gen.lora_weight_sync}, "
                         f"max_new_tokens {gen.max_new_tokens}, T={gen.temperature:g}"))
    if cfg.dpo:
        rows.append(("DPO beta", f"{cfg.dpo.reference_policy_kl_penalty:g} "
                     "(reference = the base model with the adapter disabled)"))
    if cfg.checkpointing.enabled:
        rows.append(("checkpoints", f"{cfg.checkpointing.checkpoint_dir} every "
                     f"{cfg.checkpointing.save_period} steps, keep {cfg.checkpointing.keep_top_k}"))
    rows.append(("metrics", f"{cfg.logger.log_dir}/metrics.jsonl"))
    return rows


def print_explanation(result: ValidationResult, console: Console) -> None:
    import yaml

    cfg = result.config
    if cfg is None:
        raise ValueError("explain needs a valid recipe")
    table = Table(title=f"{result.file}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    mask = result.env_reads.mask  # values read through ${oc.env:...} are not shown
    for key, value in run_rows(cfg) + lora_rows(cfg) + adapted_group_rows(cfg, result.model):
        table.add_row(key, mask(value))
    if result.model:
        m = result.model
        table.add_row("model shape", f"{m.model_type}: {m.num_hidden_layers} layers, hidden "
                      f"{m.hidden_size}, heads {m.num_attention_heads}/{m.num_key_value_heads} kv")
    console.print(table)
    console.rule("resolved recipe")
    console.print(mask(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True),
                                      sort_keys=False)), highlight=False, markup=False)


def _scale_row(lora: AnyLoraConfig) -> tuple[str, str]:
    """The effective adapter scale and its formula (rsLoRA: alpha / sqrt(dim))."""
    from lora_rl.interop.adapter_fit import lora_scale

    scale = f"{lora_scale(lora.dim, lora.alpha, lora.use_rslora):g}"
    if lora.use_rslora:
        return "scale alpha/sqrt(dim)", f"{scale} (rsLoRA)"
    return "scale alpha/dim", scale
