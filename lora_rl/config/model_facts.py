"""What validation can know about a model without importing torch: its config.json.

Linear-module names are derived from the family's architecture description
(`lora_rl.architecture`) so that target_modules can be checked before any weights load (the HF
names for HF-style backends, the Megatron names for Megatron).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lora_rl.architecture import Architecture, UnsupportedArchitecture, architecture_from_config
from lora_rl.errors import LoraRlError


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
    architecture: Architecture | None = None
    """The family's description; None when lora-rl has none for this model_type."""
    architecture_problem: str | None = None
    """Why `architecture` is None (names the supported families)."""

    def linear_names(self, backend: Literal["dtensor", "megatron"]) -> list[str]:
        """Full names of the model's linear modules; empty when the architecture is unknown
        or the backend does not map it."""
        if self.architecture is None or self.architecture.unsupported(backend):
            return []
        return self.architecture.linear_names(backend)


class ModelFactsError(LoraRlError, ValueError):
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
        try:
            arch, arch_problem = architecture_from_config(raw), None
        except UnsupportedArchitecture as exc:
            arch, arch_problem = None, str(exc)
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
            architecture=arch, architecture_problem=arch_problem,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFactsError(f"{config_path} lacks a usable {exc} field") from None
