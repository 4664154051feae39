"""A chat-capable tiny tokenizer and model: the embedded tiny ones plus a chat template written
in the tiny vocabulary (lower-case letters, digits, `+`, `=`, space), so chat data runs end to
end on the 2-layer model."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from tests.training.conftest import model_cache, runner  # noqa: F401  (fixtures)

# `{% generation %}` marks the assistant tokens for transformers' assistant mask.
TAGGED = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}bot "
          "{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}"
          "{% else %}{{ m['role'] }} {{ m['content'] }} {% endif %}{% endfor %}"
          "{% if add_generation_prompt %}bot {% endif %}")
# The same rendering without the tags: assistant tokens are found by prefix rendering.
UNTAGGED = TAGGED.replace("{% generation %}", "").replace("{% endgeneration %}", "")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from lora_rl.tiny.model import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def chat_model(model_cache, tmp_path_factory) -> Path:  # noqa: F811
    """The tiny model whose tokenizer carries the TAGGED chat template."""
    from transformers import AutoTokenizer

    target = tmp_path_factory.mktemp("chat-model") / "tiny-chat"
    shutil.copytree(model_cache / "tiny-llama-v1", target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.chat_template = TAGGED
    tokenizer.save_pretrained(target)
    return target


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


PAIRS = [(a, b) for a in range(10) for b in range(10)]
random.Random(0).shuffle(PAIRS)
TRAIN, VAL = PAIRS[20:], PAIRS[:20]
"""Every single-digit addition, shuffled once; the last 80 train, the first 20 validate."""


def chat_rows(pairs: list[tuple[int, int]], turns: int = 1) -> list[dict]:
    """`a+b=` -> `a+b` conversations; with turns=2 a second exchange follows."""
    rows = []
    for a, b in pairs:
        messages = [{"role": "user", "content": f"{a}+{b}="},
                    {"role": "assistant", "content": str(a + b)}]
        if turns == 2:
            messages += [{"role": "user", "content": f"{b}+{a}="},
                         {"role": "assistant", "content": str(a + b)}]
        rows.append({"messages": messages})
    return rows


def chat_pairs(pairs: list[tuple[int, int]], seed: int = 0) -> list[dict]:
    """The tiny task's preference pairs (`lora_rl.tiny.tasks.dpo_records`: the right sum over
    a seeded wrong one) as conversational pairs: a user prompt, one-message assistant sides."""
    from lora_rl.tiny.tasks import dpo_records

    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]}
            for r in dpo_records(pairs, seed)]
