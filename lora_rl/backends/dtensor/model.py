"""Build the policy: a local Hugging Face causal LM, with LoRA applied when the recipe asks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lora_rl.config.policy import PolicyConfig
from lora_rl.config.quantization import QuantizationConfig
from lora_rl.errors import SetupError
from lora_rl.lora import LoraReport, apply_lora
from lora_rl.model_source import require_local_model_dir


@dataclass
class BuiltPolicy:
    model: torch.nn.Module
    model_dir: Path
    lora_report: LoraReport | None
    mesh: Any = None
    """The device mesh the model is already sharded on (a multi-adapter run shards its shared
    base itself, `adapter_slots.shard_installed`); None: the backend shards it."""

    def report(self) -> dict[str, int | float | str]:
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        out: dict[str, int | float | str] = {"trainable_params": trainable, "total_params": total}
        if self.lora_report is not None:
            out["lora_scale"] = self.lora_report.scale
            out["lora_modules"] = len(self.lora_report.patched)
        return out


def load_hf_model(model_dir: Path, precision: str, trust_remote_code: bool,
                  quantization: QuantizationConfig | None = None) -> torch.nn.Module:
    """The causal LM in `precision`; its linear layers (not the output layer) quantized by
    bitsandbytes when `quantization` is given (a checkpoint that is already quantized loads
    quantized either way: transformers reads its own `quantization_config`)."""
    from transformers import AutoModelForCausalLM

    extra = {}
    if quantization is not None:
        extra["quantization_config"] = bnb_config(quantization, precision)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, precision), trust_remote_code=trust_remote_code,
        attn_implementation="sdpa", **extra,
    )
    model.config.use_cache = False
    if quantization is not None:
        keep_fp_compute(model)
    return model


def keep_fp_compute(model: torch.nn.Module) -> None:
    """bitsandbytes (0.50) repacks a 4-bit weight for an AVX512-BF16 kernel the first time a
    layer runs in eval mode without grad on such a CPU: from then on inference (log-probs, the
    reference policy, generation) computes in bf16 while training steps dequantize to the
    compute dtype, ~1e-3 apart on a layer's output. Training and inference must compute one
    function, so that path is switched off."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def bnb_config(quantization: QuantizationConfig, precision: str):
    """transformers' BitsAndBytesConfig for the recipe's `policy.quantization`."""
    from transformers import BitsAndBytesConfig

    if quantization.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quantization.bnb_4bit_quant_type,
        bnb_4bit_compute_dtype=getattr(torch, quantization.bnb_4bit_compute_dtype or precision),
        bnb_4bit_use_double_quant=quantization.bnb_4bit_use_double_quant,
        bnb_4bit_quant_storage=getattr(torch, quantization.bnb_4bit_quant_storage))


def build_policy_model(policy: PolicyConfig, seed: int) -> BuiltPolicy:
    model_dir = require_local_model_dir(policy.model_name)
    model = load_hf_model(model_dir, policy.precision, policy.trust_remote_code,
                          policy.quantization)
    report = add_adapter(model, policy, seed)
    if policy.dtensor_cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return BuiltPolicy(model, model_dir, report)


def add_adapter(model: torch.nn.Module, policy: PolicyConfig, seed: int) -> LoraReport | None:
    """Wrap the recipe's LoRA targets of `model` (seeded: the same adapter in every run and on
    every rank) and load `init_adapter_path` into them; None when LoRA is off."""
    report = None
    lora = policy.dtensor_cfg.lora_cfg
    if lora.enabled:
        # Same seed on every rank and every run: adapters start identical everywhere.
        torch.manual_seed(seed)
        report = apply_lora(model, lora)
    if policy.init_adapter_path:
        from lora_rl.interop.peft_import import load_peft_adapter

        if report is None:
            raise SetupError("policy.init_adapter_path needs LoRA enabled on the DTensor backend")
        load_peft_adapter(model, Path(policy.init_adapter_path))
    return report
