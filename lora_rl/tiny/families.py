"""Tiny random models of every supported family, with the embedded tiny tokenizer.

Built with transformers' own `from_config` + `save_pretrained`, so they are exactly what a user
gets from those classes; the shapes are tiny (2 layers, hidden 64, 4 heads / 2 KV heads of 16)
so that tp=2 divides everything and a few SFT steps take seconds on a CPU.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lora_rl.tiny.model import LM_HEAD_STD, build_tokenizer

_COMMON: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                               max_position_embeddings=128, tie_word_embeddings=False)
_MOE: dict[str, Any] = dict(num_experts_per_tok=2, moe_intermediate_size=32)

FAMILY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", {"use_sliding_window": False}),
    "qwen3": ("Qwen3Config", {}),
    "gemma2": ("Gemma2Config", {"query_pre_attn_scalar": 16, "sliding_window": 64}),
    "gemma3_text": ("Gemma3TextConfig", {"query_pre_attn_scalar": 16, "sliding_window": 64}),
    "phi3": ("Phi3Config", {}),
    "qwen3_moe": ("Qwen3MoeConfig", {**_MOE, "num_experts": 4}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
}
"""model_type -> (transformers config class, family-specific settings)."""


def family_config(model_type: str, vocab_size: int, special: dict[str, int], **changes: Any):
    import transformers

    class_name, extra = FAMILY_CONFIGS[model_type]
    config_cls = getattr(transformers, class_name)
    return config_cls(vocab_size=vocab_size, **{**_COMMON, **extra, **special, **changes})


def build_family_model(model_type: str, out_dir: Path, seed: int = 0, **changes: Any) -> Path:
    """A tiny random `model_type` model + the tiny tokenizer in `out_dir` (atomic); `changes`
    override config fields (e.g. tie_word_embeddings=True)."""
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = build_tokenizer(seed)
    tokenizer.save_pretrained(tmp)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = family_config(model_type, len(tokenizer), special, **changes)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # Like the tiny Llama: a frozen head wide enough for adapters to move the logits.
        torch.nn.init.normal_(model.get_output_embeddings().weight, std=LM_HEAD_STD)
    model.save_pretrained(tmp, safe_serialization=True)
    if out_dir.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, out_dir)
    return out_dir
