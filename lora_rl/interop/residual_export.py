"""A PiSSA/OLoRA adapter as a plain LoRA for the ORIGINAL base (PEFT's
`path_initial_model_for_weight_conversion` / `subtract_mutated_init`).

Training ran on the residual W_res = W - s B0 A0 with the trained (A, B), so the trained model is
W_res + s B A = W + s (B A - B0 A0) = W + s [B | -B0] [A ; A0]: a LoRA of rank 2r on the original
base, with alpha doubled (alpha * sqrt(2) with rsLoRA) so that the scale s stays the same.
The init (A0, B0) is recomputed from the original base weights; only its product B0 A0 enters
the delta, and that does not depend on the factorisation's sign choices (see `residual_init`).
"""

from __future__ import annotations

import math

import torch

from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig


def init_factors(base_model: str, lora: DTensorLoraConfig | MegatronPeftConfig,
                 adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{`<module>.lora_A.weight`: A0, `<module>.lora_B.weight`: B0} of `lora` applied to the
    base model's original weights (lora_state_dict keys). A Megatron adapter (HF names, one
    module per canonical projection) is factorised on exactly the HF modules it names."""
    from transformers import AutoModelForCausalLM

    from lora_rl.interop.peft_format import wrap_adapter_modules
    from lora_rl.lora import apply_lora, iter_lora_layers, lora_spec_from_config
    from lora_rl.model_source import check_weights, require_local_model_dir

    directory = require_local_model_dir(base_model)
    check_weights(directory, allow_pickle=False)  # safetensors only (LR804)
    model = AutoModelForCausalLM.from_pretrained(directory)
    if isinstance(lora, MegatronPeftConfig):
        wrap_adapter_modules(model, adapter, lora_spec_from_config(lora))
    else:
        apply_lora(model, lora)
    out = {}
    for name, layer in iter_lora_layers(model):
        a0, b0 = getattr(layer, "lora_A_init", None), getattr(layer, "lora_B_init", None)
        if a0 is None or b0 is None:
            raise ValueError(f"{name} has no {lora.init_lora_weights} init to convert")
        out[f"{name}.lora_A.weight"] = a0
        out[f"{name}.lora_B.weight"] = b0
    return out


def as_plain_lora(adapter: dict[str, torch.Tensor], init: dict[str, torch.Tensor], rank: int,
                  alpha: float, use_rslora: bool) -> tuple[dict[str, torch.Tensor], int, float]:
    """(adapter, rank, alpha) of the plain LoRA that adds the same delta to the original base."""
    if set(adapter) != set(init):
        missing = sorted(set(adapter) ^ set(init))
        raise ValueError(f"the adapter and the recomputed init name different modules "
                         f"({', '.join(missing[:4])}); another base model?")
    out = {}
    for key, value in adapter.items():
        start = init[key].to(value.dtype)
        if key.endswith(".lora_A.weight"):
            out[key] = torch.cat([value, start], dim=0)
        elif key.endswith(".lora_B.weight"):
            out[key] = torch.cat([value, -start], dim=1)
        else:
            raise ValueError(f"{key}: a residual init converts plain A/B adapters only")
    return out, 2 * rank, alpha * (math.sqrt(2) if use_rslora else 2)
