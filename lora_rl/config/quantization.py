"""`policy.quantization`: load the frozen base in 4 or 8 bits with bitsandbytes (QLoRA).

Field names are Hugging Face's `BitsAndBytesConfig` arguments, as NeMo Automodel's
`quantization:` block spells them (`load_in_4bit`, `bnb_4bit_quant_type`, ...), so a QLoRA
block from there carries over. Absent (null) loads the base in `policy.precision` as before.
What it cannot be combined with (several processes, Megatron, vLLM, full fine-tuning, DoRA,
PiSSA/OLoRA) is refused at validate time (`lora_rl.config.rules_quantized`).
"""

from typing import Literal

from lora_rl.config.base import DType, Section


class QuantizationConfig(Section):
    """bitsandbytes quantization of the frozen base weights (every linear layer but the output
    layer); LoRA adapters train on top in `lora_cfg.lora_dtype`. DTensor backend, one process."""

    load_in_4bit: bool = False
    """Quantize the base linear weights to 4 bits (`bnb_4bit_quant_type`), QLoRA's setting."""
    load_in_8bit: bool = False
    """Quantize the base linear weights to int8 (LLM.int8()). Exactly one of `load_in_4bit` /
    `load_in_8bit` is true."""
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type: `nf4` (NormalFloat, QLoRA's) or `fp4`."""
    bnb_4bit_compute_dtype: DType | None = None
    """Dtype the 4-bit weights are dequantized to for each matmul; null means
    `policy.precision`. Use float32 on CPU."""
    bnb_4bit_use_double_quant: bool = False
    """Quantize the per-block scales too (QLoRA's double quantization, ~0.4 bit per weight
    less)."""
    bnb_4bit_quant_storage: Literal["uint8", "float32", "bfloat16", "float16"] = "uint8"
    """Dtype the packed 4-bit weights are stored in (bfloat16 lets FSDP shard them with bf16
    parameters elsewhere; on one process it changes nothing)."""

    @property
    def bits(self) -> int:
        return 4 if self.load_in_4bit else 8

    @property
    def label(self) -> str:
        """`nf4`, `fp4` or `int8`, for messages and reports."""
        return self.bnb_4bit_quant_type if self.load_in_4bit else "int8"
