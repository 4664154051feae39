"""The embedded tiny task: single-digit addition, `3+4=` -> `7`.

Why this task: every answer is one or two tokens, the held-out pairs (a, b) are unseen
combinations of seen digits, and a randomly initialised 2-layer Llama with LoRA adapters only
learns it within a few hundred 30 ms steps on a CPU. Measured on 2 CPU cores (2026-11-23, r=8,
alpha=16, lr 5e-3, batch 16, 400 steps, ~20 s): training loss 5.88 -> 0.10, held-out greedy
exact match 0% -> 90%.

Records are a pure function of the seed (a seeded `random.Random`, never the global RNG).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

VAL_PAIRS = 20
SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "lora adapts a frozen model with low rank updates",
)


def _pairs(seed: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    pairs = [(a, b) for a in range(10) for b in range(10)]
    random.Random(seed).shuffle(pairs)
    return pairs[VAL_PAIRS:], pairs[:VAL_PAIRS]


def _prompt(a: int, b: int) -> str:
    return f"{a}+{b}="


def _wrong(a: int, b: int, rng: random.Random) -> str:
    return str(rng.choice([s for s in range(19) if s != a + b]))


def sft_records(pairs: list[tuple[int, int]]) -> list[dict[str, str]]:
    return [{"prompt": _prompt(a, b), "response": str(a + b)} for a, b in pairs]


def dpo_records(pairs: list[tuple[int, int]], seed: int) -> list[dict[str, str]]:
    rng = random.Random(f"dpo/{seed}")
    return [{"prompt": _prompt(a, b), "chosen": str(a + b), "rejected": _wrong(a, b, rng)}
            for a, b in pairs]


def grpo_records(pairs: list[tuple[int, int]]) -> list[dict[str, str]]:
    return [{"prompt": _prompt(a, b), "answer": str(a + b)} for a, b in pairs]


def corpus(seed: int = 0) -> list[str]:
    """Text the tokenizer is trained on: every task string plus a few fixed sentences."""
    train, val = _pairs(seed)
    return [f"{_prompt(a, b)}{a + b}" for a, b in train + val] + list(SENTENCES)


def write_task_data(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write `{sft,dpo,grpo}_{train,val}.jsonl` (byte-identical for the same seed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val = _pairs(seed)
    written = {}
    for split, pairs in (("train", train), ("val", val)):
        for name, records in (("sft", sft_records(pairs)), ("dpo", dpo_records(pairs, seed)),
                              ("grpo", grpo_records(pairs))):
            path = out_dir / f"{name}_{split}.jsonl"
            path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records),
                            encoding="utf-8")
            written[f"{name}_{split}"] = path
    return written
