"""What validation can know about a model without importing torch: its config.json.

Linear-module names are derived from the architecture so that target_modules can be checked
before any weights load (the HF names for HF-style backends, the Megatron names for Megatron).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Decoder families whose linear layers follow the Llama layout.
LLAMA_LIKE = frozenset({"llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2"})


@dataclass(frozen=True)
class ModelFacts:
    source: str
    model_type: str
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    hidden_size: int
    intermediate_size: int
    quantized: str | None

    def linear_names(self, backend: Literal["dtensor", "megatron"]) -> list[str]:
        """Full names of the model's linear modules; empty when the architecture is unknown."""
        if self.model_type not in LLAMA_LIKE:
            return []
        names: list[str] = []
        for i in range(self.num_hidden_layers):
            if backend == "megatron":
                prefix = f"decoder.layers.{i}"
                names += [f"{prefix}.self_attention.linear_qkv",
                          f"{prefix}.self_attention.linear_proj",
                          f"{prefix}.mlp.linear_fc1", f"{prefix}.mlp.linear_fc2"]
            else:
                prefix = f"model.layers.{i}"
                names += [f"{prefix}.self_attn.{p}_proj" for p in "qkvo"]
                names += [f"{prefix}.mlp.{p}_proj" for p in ("gate", "up", "down")]
        names.append("output_layer" if backend == "megatron" else "lm_head")
        return names


class ModelFactsError(ValueError):
    pass


def read_model_facts(model_dir: Path) -> ModelFacts:
    """Read `model_dir/config.json`. Raises ModelFactsError with a readable reason."""
    config_path = model_dir / "config.json"
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFactsError(f"{model_dir} has no config.json (not a Hugging Face model "
                              "directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFactsError(f"{config_path} cannot be read: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelFactsError(f"{config_path} is not a JSON object")
    try:
        heads = int(raw["num_attention_heads"])
        quant = raw.get("quantization_config")
        return ModelFacts(
            source=str(model_dir),
            model_type=str(raw.get("model_type", "unknown")),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw.get("intermediate_size") or 0),
            quantized=(quant.get("quant_method") or "quantized") if isinstance(quant, dict)
            else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFactsError(f"{config_path} lacks a usable {exc} field") from None
