"""The tokenizer an export ships: the training tokenizer, changed so that plain `transformers`
encodes prompts the way training did.

Training renders text itself (data/render.py). Plain-format runs add BOS by hand, which the
tokenizer's own `tokenizer(prompt)` may not do (the tiny tokenizer does not): an exported model
queried that way would see prompts without BOS and score far below the run. So the exported
tokenizer gets a post-processor that adds BOS exactly when training did, and a chat template
that reproduces the training format (the template in force for chat runs; for plain runs one
that concatenates the messages with BOS first and EOS after each response).

Checkpoints record the facts (`tokenizer` in state.json) at save time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lora_rl.config.policy import PolicyConfig
    from lora_rl.config.sections import DataConfig

PLAIN_TEMPLATE = (
    "{% if add_bos %}{{ bos_token }}{% endif %}{% for message in messages %}"
    "{{ message['content'] }}{% if message['role'] == 'assistant' and add_eos %}"
    "{{ eos_token }}{% endif %}{% endfor %}")


def plain_template(add_bos: bool, add_eos: bool) -> str:
    """PLAIN_TEMPLATE with the run's BOS/EOS choices written in."""
    return ("{% set add_bos = " + str(add_bos).lower() + " %}{% set add_eos = "
            + str(add_eos).lower() + " %}" + PLAIN_TEMPLATE)


def tokenizer_state(policy: PolicyConfig, data: DataConfig, renderer) -> dict[str, Any]:
    """What an export needs to reproduce this run's encoding (stored in checkpoints)."""
    from lora_rl.data.render import ChatRenderer

    if isinstance(renderer, ChatRenderer):
        return {"format": "chat", "add_bos": False, "chat_template": renderer.template,
                "source": policy.tokenizer.name or policy.model_name}
    return {"format": "plain", "add_bos": data.add_bos,
            "chat_template": plain_template(data.add_bos, data.add_eos),
            "source": policy.tokenizer.name or policy.model_name}


def _add_bos_on_encode(tokenizer) -> None:
    from tokenizers import processors

    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if bos is None or bos_id is None:
        return
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None:  # a slow tokenizer: its own flag
        tokenizer.add_bos_token = True
        return
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A:0", pair=f"{bos} $A:0 $B:1", special_tokens=[(bos, bos_id)])


def write_tokenizer(state: dict[str, Any] | None, base_dir: Path, target: Path) -> None:
    """Save the tokenizer of `base_dir` into `target`, made to match the run (`state` from the
    checkpoint; without one, as it is)."""
    from transformers import AutoTokenizer

    from lora_rl.model_source import require_local_model_dir

    source = require_local_model_dir(state["source"]) if state and state.get("source") \
        else base_dir
    tokenizer = AutoTokenizer.from_pretrained(source)
    if state:
        tokenizer.chat_template = state.get("chat_template")
        encoded = tokenizer("x")["input_ids"]
        starts_with_bos = bool(encoded) and encoded[0] == tokenizer.bos_token_id
        if state.get("add_bos") and not starts_with_bos:
            _add_bos_on_encode(tokenizer)
    tokenizer.save_pretrained(target)
