"""One (2048 x 1024) -> 1024 linear, fp32, forward + backward: frozen base vs full fine-tune vs
LoRA r=16 (lora-rl's torch path), side by side in one process with fixed threads."""

from __future__ import annotations

import json
import sys
import time

from benchmarks.common import THREADS, save


def _time(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return sorted(samples)[len(samples) // 2]


def run(quick: bool) -> dict:
    import torch

    from lora_rl.lora.layer import LoraLinear
    from lora_rl.lora.spec import LoraSpec

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    x = torch.randn(2048, 1024, requires_grad=True)
    full = torch.nn.Linear(1024, 1024, bias=False)
    frozen = torch.nn.Linear(1024, 1024, bias=False).requires_grad_(False)
    lora = LoraLinear(torch.nn.Linear(1024, 1024, bias=False),
                      LoraSpec(16, 32, 0.0, "post", "xavier", "zero", None, False))

    def step(layer):
        def fn():
            x.grad = None
            layer.zero_grad(set_to_none=True)
            layer(x).sum().backward()
        return fn

    repeats = 5 if quick else 20
    times = {"frozen": _time(step(frozen), repeats), "full": _time(step(full), repeats),
             "lora": _time(step(lora), repeats)}
    result = {"ms": {k: v * 1000 for k, v in times.items()},
              "ratio_vs_full": {k: v / times["full"] for k, v in times.items()},
              "shape": "x [2048, 1024] -> 1024, r=16, fp32"}
    save("lora_layer", result, quick)
    return result


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
