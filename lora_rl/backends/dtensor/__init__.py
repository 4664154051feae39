"""PyTorch DTensor backend: HF model + LoRA, FSDP2 data parallel, tensor parallel."""

from lora_rl.backends.dtensor.backend import DTensorBackend

__all__ = ["DTensorBackend"]
