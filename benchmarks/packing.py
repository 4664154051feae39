"""SFT sequence packing on skewed lengths: LoRA forward + backward tokens/s, padded micro-batches
vs packed rows (lora_rl.data.packing), same examples, same model, same token budget.

Lengths are long-tailed as in instruction data: 85 % of the examples 8-32 tokens, 15 % 96-128.
Padded: micro-batches of `batch` examples in data order, each padded to its longest.
Packed: rows of `seq` tokens (first-fit decreasing), `batch` rows per micro-batch.
Run: `python -m benchmarks.packing [--quick]` (results/packing[-quick].json).
"""

from __future__ import annotations

import json
import random
import sys
import time

from benchmarks.common import THREADS, save, utc_now


def _examples(count: int, seq: int, vocab: int, seed: int = 0):
    from lora_rl.data.examples import Example

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(seq * 3 // 4, seq) if rng.random() < 0.15 else rng.randint(8, 32)
        prompt = n // 2
        out.append(Example(tuple(rng.randrange(3, vocab) for _ in range(n)),
                           tuple([0] * prompt + [1] * (n - prompt))))
    return out


def _epoch_time(model, batches) -> float:
    from lora_rl.backends.token_logprobs import batch_token_logprobs

    started = time.perf_counter()
    for batch in batches:
        (-(batch_token_logprobs(model, batch) * batch.target_mask).sum()).backward()
    return time.perf_counter() - started


def run(quick: bool) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lora_rl.config.lora import DTensorLoraConfig
    from lora_rl.data.packing import packed_micro_batches
    from lora_rl.data.sources import chunks, collate
    from lora_rl.lora import apply_lora

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    hidden, layers, seq, batch, count = (128, 2, 128, 8, 64) if quick else (256, 4, 128, 8, 192)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 3,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=4096, max_position_embeddings=seq)
    model = LlamaForCausalLM(config)
    apply_lora(model, DTensorLoraConfig(enabled=True, dim=16, alpha=32, use_triton=False))
    examples = _examples(count, seq, config.vocab_size)
    padded = [collate(c, 0) for c in chunks(examples, batch)]
    packed = packed_micro_batches(examples, seq, seq * batch, pad_id=0)
    tokens = sum(len(e.input_ids) for e in examples)
    timings = {"padded": [], "packed": []}
    for _ in range(2 if quick else 3):
        for name, batches in (("padded", padded), ("packed", packed)):
            timings[name].append(_epoch_time(model, batches))
    best = {name: min(values) for name, values in timings.items()}
    cells = {"padded": sum(b.input_ids.numel() for b in padded),
             "packed": sum(b.input_ids.numel() for b in packed)}
    return {
        "when": utc_now(), "quick": quick, "threads": THREADS,
        "shape": {"hidden": hidden, "layers": layers, "seq": seq, "micro_batch": batch,
                  "examples": count, "real_tokens": tokens},
        "micro_batches": {"padded": len(padded), "packed": len(packed)},
        "token_cells": cells,
        "tokens_per_s": {name: tokens / best[name] for name in best},
        "speedup": best["padded"] / best["packed"],
        "timings_s": timings,
    }


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    result = run(quick)
    path = save("packing", result, quick)
    print(json.dumps({k: result[k] for k in ("tokens_per_s", "speedup", "token_cells")},
                     indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
