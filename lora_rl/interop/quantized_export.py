"""Merged export of a QLoRA run: the quantized base the adapter trained on, dequantized, plus
the adapter's delta, written as a plain full-precision Hugging Face checkpoint.

Merging into the original full-precision weights instead would ship a model the adapter never
saw (the quantization error of every weight is part of what it learned around). So the base is
loaded quantized exactly as the run loaded it (`policy.quantization`, recorded in the
checkpoint's state.json), every bitsandbytes linear is dequantized (NF4/FP4 blocks through
`bitsandbytes.functional.dequantize_4bit`, int8 rows as `int8 * SCB / 127`), adapted ones get
`scale * B @ A` added in fp32, and the results replace the weights of a plain fp32 copy of the
model (its embeddings, norms and output layer were never quantized, so they are the same).

For 4-bit the merged model computes what the trained one did (bitsandbytes dequantizes to the
compute dtype and multiplies; `load_hf_model` keeps it off its bf16 CPU inference kernel). For
int8 it does not exactly: LLM.int8() also quantizes the activations, ~1e-3 relative on a
layer output measured here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lora_rl.config.lora import DTensorLoraConfig
from lora_rl.config.quantization import QuantizationConfig
from lora_rl.errors import LoraRlError


class QuantizedExportError(LoraRlError, ValueError):
    pass


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The fp32 [out, in] weight a bitsandbytes linear holds."""
    weight = module.weight
    state = getattr(weight, "quant_state", None)
    if state is not None:
        import bitsandbytes

        if getattr(state, "packing_format_for_cpu", False):
            raise QuantizedExportError(f"{type(module).__name__}'s weight was repacked for "
                                       "bitsandbytes' CPU inference kernel; load the model with "
                                       "lora-rl's load_hf_model (it keeps the plain layout)")

        return bitsandbytes.functional.dequantize_4bit(weight.data, state).float()
    scb = getattr(weight, "SCB", None)
    if scb is not None and weight.dtype == torch.int8:
        return weight.data.float() * scb.float().unsqueeze(1) / 127
    raise QuantizedExportError(f"{type(module).__name__} with a {type(weight).__name__} weight is "
                               "not a bitsandbytes 4-bit or int8 linear")


def _is_quantized(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return weight is not None and (getattr(weight, "quant_state", None) is not None
                                   or getattr(weight, "SCB", None) is not None)


@torch.no_grad()
def dequantized_merged_model(directory: Path, adapter: dict[str, torch.Tensor],
                             lora: DTensorLoraConfig,
                             quantization: QuantizationConfig) -> nn.Module:
    """A plain fp32 model: dequantized base + the adapter's delta (see the module docstring)."""
    from transformers import AutoModelForCausalLM

    from lora_rl.backends.dtensor.model import load_hf_model
    from lora_rl.lora import LoraLinear, apply_lora, load_lora_state_dict

    quantized = load_hf_model(directory, "float32", False, quantization)
    apply_lora(quantized, lora)
    load_lora_state_dict(quantized, adapter)
    plain = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    done = set()
    for path, module in quantized.named_modules():
        if isinstance(module, LoraLinear):
            weight = module.delta_weight()
            if _is_quantized(module.base):
                weight = weight + dequantized_weight(module.base)
            else:
                weight = weight + module.base.weight.float()
            done.add(f"{path}.base")
        elif _is_quantized(module) and path not in done:
            weight = dequantized_weight(module)
        else:
            continue
        target = plain.get_submodule(path).weight
        if target.shape != weight.shape:
            raise QuantizedExportError(f"{path}: dequantized weight {tuple(weight.shape)} does "
                                       f"not fit the model's {tuple(target.shape)}")
        target.copy_(weight.to(target.dtype))
    return plain
