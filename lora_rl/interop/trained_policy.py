"""A trained policy, ready to answer: the recipe's base model with an adapter from a training
checkpoint or an exported PEFT directory, and the recipe's own prompt format — so `generate`
and `eval` see prompts exactly as training and its validation did.

One process, plain transformers: a tensor- or pipeline-parallel run's checkpoint holds whole
(gathered) adapter tensors in Hugging Face module names, so any layout loads here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lora_rl.config.recipe import RecipeConfig
from lora_rl.data.render import Renderer
from lora_rl.errors import LoraRlError


class PolicyLoadError(LoraRlError, ValueError):
    pass


@dataclass
class TrainedPolicy:
    model: torch.nn.Module
    tokenizer: Any
    renderer: Renderer
    source: str
    """What was loaded, for the user: `base model only`, `checkpoint results/run/step_60`."""

    def answer_ids(self, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                   streamer: Any = None) -> Iterator[list[int]]:
        """Completion token ids per rendered prompt (EOS excluded), one prompt at a time: no
        padding, so greedy answers are the ones the run's own evaluation produced."""
        eos = self.tokenizer.eos_token_id
        for prompt in prompts:
            ids = torch.tensor([prompt])
            sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else \
                {"do_sample": False}
            with torch.no_grad():
                out = self.model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                    eos_token_id=eos, pad_token_id=self.tokenizer.pad_token_id,
                    streamer=streamer, **sampling, top_p=None, top_k=None)
            new = out[0, ids.shape[1]:].tolist()
            yield new[:new.index(eos)] if eos in new else new

    def typed(self, cfg: RecipeConfig, text: str) -> list[int]:
        """A prompt typed by the user, rendered as training rendered its prompts."""
        from lora_rl.data.sources import typed_prompt

        return self.renderer.prompt_ids(typed_prompt(cfg.data, cfg.algorithm, text))


def load_trained_policy(cfg: RecipeConfig, checkpoint: Path | None,
                        adapter: bool = True) -> TrainedPolicy:
    """The recipe's model with the adapter of `checkpoint` (a `step_N` directory, a
    checkpoint_dir — its latest good step —, or an exported PEFT adapter); by default the
    recipe's own checkpoint_dir. `adapter=False` gives the base model, for comparison."""
    from transformers import AutoModelForCausalLM

    from lora_rl.data.sources import load_tokenizer, renderer
    from lora_rl.model_source import require_local_model_dir

    tokenizer = load_tokenizer(cfg.policy, cfg.data)
    model_dir = require_local_model_dir(cfg.policy.model_name)
    quantization = cfg.policy.quantization
    if quantization is not None:
        # QLoRA: the adapter is evaluated on the quantized base it trained on.
        from lora_rl.backends.dtensor.model import load_hf_model

        model = load_hf_model(model_dir, "float32", cfg.policy.trust_remote_code, quantization)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    source = "base model only"
    if adapter:
        where = checkpoint or Path(cfg.checkpointing.checkpoint_dir)
        source = _load_adapter(model, where, "float32" if quantization is not None else None)
    model.eval()
    return TrainedPolicy(model, tokenizer, renderer(cfg.policy, cfg.data, cfg.algorithm, tokenizer),
                         source)


def _load_adapter(model: torch.nn.Module, where: Path, dtype: str | None = None) -> str:
    """`dtype`: the adapter's dtype where the adapter does not say (a quantized base's packed
    integers are no dtype for it)."""
    import dataclasses

    from lora_rl.interop.peft_format import (
        ADAPTER_CONFIG,
        AdapterFormatError,
        adapter_spec,
        read_adapter,
        wrap_adapter_modules,
    )
    from lora_rl.lora import load_lora_state_dict, lora_spec_from_config

    if not where.exists():
        raise PolicyLoadError(f"{where}: no such checkpoint or adapter directory (train first "
                              "with `lora-rl run`, or pass --checkpoint)")
    try:
        if (where / ADAPTER_CONFIG).is_file():
            config, tensors = read_adapter(where)
            spec, what = adapter_spec(config), f"adapter {where}"
        else:
            from lora_rl.interop.export import ExportError, checkpoint_adapter

            try:
                found = checkpoint_adapter(where)
            except ExportError as exc:
                raise PolicyLoadError(str(exc)) from None
            # The LoRA the run trained (rank, scale, rsLoRA, DoRA), built as training built it.
            tensors, spec = found.adapter, lora_spec_from_config(found.lora)
            what = f"checkpoint {found.path}"
        if spec.dtype is None and dtype is not None:
            spec = dataclasses.replace(spec, dtype=dtype)
        wrap_adapter_modules(model, tensors, spec)
        load_lora_state_dict(model, tensors)
    except PolicyLoadError:
        raise
    except (AdapterFormatError, KeyError, ValueError) as exc:
        raise PolicyLoadError(f"{where}: {exc}") from None
    return what
