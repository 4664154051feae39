"""Megatron Core backend: GPTModel (local spec) from a HF Llama, LoRA, tensor/pipeline/data
parallel, on CPU through a small shim (`cpu_shim`). Needs the `megatron` extra."""

from lora_rl.backends.megatron.backend import MegatronBackend

__all__ = ["MegatronBackend"]
