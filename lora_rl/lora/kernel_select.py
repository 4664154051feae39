"""Which LoRA compute path runs: the fused Triton kernel or torch.

Deciding must not import triton (seconds, and not installed everywhere): `explain` asks before
anything runs, and `import lora_rl.lora` stays light.
"""

from __future__ import annotations

import functools
import importlib.util

from lora_rl.lora.spec import LoraSpec


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def triton_path_reason(spec: LoraSpec) -> tuple[bool, str]:
    """(whether the Triton kernel runs, a sentence saying why) for `explain` and run logs."""
    if not spec.use_triton:
        return False, "torch path (use_triton: false)"
    if not _cuda_available():
        return False, "torch path (use_triton is set, but Triton kernels need CUDA; none here)"
    if not triton_installed():
        return False, "torch path (use_triton is set, but triton is not installed: " \
                      "pip install 'lora-rl[triton]')"
    return True, "fused Triton kernel (use_triton: true, CUDA present)"


def triton_path_active(spec: LoraSpec) -> bool:
    return triton_path_reason(spec)[0]
