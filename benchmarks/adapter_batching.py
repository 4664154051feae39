"""How a multi-adapter step should put its adapters through the shared base: in turns (lora-rl's
choice, docs/running.md) or batched, one base matmul over every adapter's rows with per-row
adapter selection (the multi-LoRA serving kernels' layout; rows grouped by adapter, so the
selection is one LoRA matmul pair per segment).

Measured on the seven projections of one SmolLM2-135M decoder layer (q, k, v, o, gate, up,
down: 576 -> 576/192/192/576/1536/1536, 1536 -> 576), K adapters of rank 8, fp32, frozen base,
forward + backward (input gradients too, as inside a model). Both schedules are written with
the same torch ops; only the grouping differs. Reported per K:
- time: batched / turns, the median of paired runs (each pair seconds apart);
- memory: bytes autograd saves for the backward that are alive at once, frozen weights left
  out (the activations a step holds): turns keep one adapter's, batched keeps every adapter's;
- max |batched - turns| of the outputs and of the LoRA gradients: whether this layer gives
  each adapter bit for bit its solo result when batched (what is left of that in a whole model
  is a question of the batch's shapes: padding to a common length, attention, reductions).

    python -m benchmarks.adapter_batching [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from benchmarks.common import THREADS, paired_ratio, save

PROJECTIONS = {"q": (576, 576), "k": (576, 192), "v": (576, 192), "o": (576, 576),
               "gate": (576, 1536), "up": (576, 1536), "down": (1536, 576)}
"""SmolLM2-135M: hidden 576, 9 query and 3 key/value heads of 64, MLP 1536."""
RANK = 8
SCALE = 32 / RANK
ROWS = {True: 128, False: 1024}
"""Tokens per adapter and step: quick, and SmolLM2's SFT recipe (4 sequences x 256)."""
ADAPTER_COUNTS = (2, 4)


def _layer(adapters: int):
    import torch

    base = {name: torch.randn(out, inp) / inp**0.5 for name, (inp, out) in PROJECTIONS.items()}
    lora = [{name: (torch.randn(RANK, inp, requires_grad=True),
                    (torch.randn(out, RANK) * 0.01).requires_grad_())
             for name, (inp, out) in PROJECTIONS.items()} for _ in range(adapters)]
    return base, lora


def _inputs(adapters: int, rows: int):
    import torch

    return [{name: torch.randn(rows, inp, requires_grad=True)
             for name, (inp, _) in PROJECTIONS.items()} for _ in range(adapters)]


def _turn(base, adapter, x):
    """One adapter's rows through the base, then its own LoRA."""
    return {name: x[name] @ base[name].T + SCALE * (x[name] @ a.T) @ b.T
            for name, (a, b) in adapter.items()}


def _batched(base, lora, batch):
    """Every adapter's rows through the base at once; each row segment (a view of the batch)
    through its adapter."""
    import torch

    out = {}
    for name, x in batch.items():
        segments = x.chunk(len(lora))
        delta = torch.cat([(segment @ adapter[name][0].T) @ adapter[name][1].T
                           for adapter, segment in zip(lora, segments, strict=True)])
        out[name] = x @ base[name].T + SCALE * delta
    return out


def _saved_bytes(forward, frozen: set[int]) -> tuple[dict, int]:
    """The forward's outputs and the bytes autograd saved for its backward, the frozen base
    weights (`frozen`: their storages, held either way) left out; distinct storages, so an
    input saved by two ops counts once."""
    import torch

    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in frozen:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = forward()
    return out, sum(storages.values())


def _backward(out: dict) -> None:
    import torch

    torch.autograd.backward(list(out.values()), [torch.ones_like(y) for y in out.values()])


def _lora_grads(lora) -> list:
    """Every adapter's A and B gradients (cleared for the next backward)."""
    grads = []
    for adapter in lora:
        for a, b in adapter.values():
            grads += [a.grad.clone(), b.grad.clone()]
            a.grad = b.grad = None
    return grads


def _measure(adapters: int, rows: int, repeats: int) -> dict[str, Any]:
    import torch

    base, lora = _layer(adapters)
    frozen = {w.untyped_storage().data_ptr() for w in base.values()}
    xs = _inputs(adapters, rows)
    # Assembled once, as a batching data loader would hand it over.
    batch = {name: torch.cat([x[name] for x in xs]).detach().requires_grad_()
             for name in PROJECTIONS}

    def turns() -> int:
        held = 0
        for adapter, x in zip(lora, xs, strict=True):
            out, saved = _saved_bytes(lambda adapter=adapter, x=x: _turn(base, adapter, x),
                                      frozen)
            _backward(out)  # a turn's activations are freed before the next turn
            held = max(held, saved)
        return held

    def batched() -> int:
        out, saved = _saved_bytes(lambda: _batched(base, lora, batch), frozen)
        _backward(out)
        return saved

    solo = [_turn(base, adapter, x) for adapter, x in zip(lora, xs, strict=True)]
    for out in solo:
        _backward(out)
    solo_grads = _lora_grads(lora)
    joint = _batched(base, lora, batch)
    _backward(joint)
    output_diff = max((joint[name][i * rows:(i + 1) * rows] - solo[i][name]).abs().max().item()
                      for name in PROJECTIONS for i in range(adapters))
    grad_diff = max((a - b).abs().max().item()
                    for a, b in zip(_lora_grads(lora), solo_grads, strict=True))
    turn_s, batch_s = [], []
    held = {}
    for repeat in range(repeats + 2):  # two warm-up pairs
        for label, fn, into in (("turns", turns, turn_s), ("batched", batched, batch_s)):
            started = time.perf_counter()
            held[label] = fn()
            if repeat >= 2:
                into.append(time.perf_counter() - started)
    return {"adapters": adapters, "rows_per_adapter": rows,
            "turns_ms": 1000 * sorted(turn_s)[len(turn_s) // 2],
            "batched_ms": 1000 * sorted(batch_s)[len(batch_s) // 2],
            "time_ratio_batched_over_turns": paired_ratio(batch_s, turn_s),
            "saved_activation_mib": {k: v / 2**20 for k, v in held.items()},
            "activation_ratio_batched_over_turns": held["batched"] / held["turns"],
            "max_abs_output_diff": output_diff, "max_abs_lora_grad_diff": grad_diff}


def run(quick: bool) -> dict[str, Any]:
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    repeats = 5 if quick else 15
    result = {"shape": f"SmolLM2-135M layer projections, rank {RANK}, fp32, fwd+bwd",
              "by_adapters": [_measure(k, ROWS[quick], repeats) for k in ADAPTER_COUNTS]}
    save("adapter_batching", result, quick)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(parser.parse_args().quick), indent=2))


if __name__ == "__main__":
    main()
