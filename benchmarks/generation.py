"""Torch generator throughput: LoRA merged into the weights (merge-weight) vs the base model vs
the adapter kept split, same prompts and sampling. Target: merged / base >= 0.95. Also the cost of
a merge + unmerge (the per-step weight sync of GRPO's merge-weight mode)."""

from __future__ import annotations

import json
import sys
import time

from benchmarks.common import SHAPES, THREADS, bench_model, run_worker, save


def _worker(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from lora_rl.config.lora import DTensorLoraConfig
    from lora_rl.generation.torch_generator import SamplingParams, generate
    from lora_rl.lora import apply_lora, merge_lora, unmerge_lora

    torch.set_num_threads(spec["threads"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"]).eval()
    prompts = torch.randint(3, spec["vocab"], (spec["prompts"], 16),
                            generator=torch.Generator().manual_seed(0)).tolist()
    params = SamplingParams(max_new_tokens=spec["new_tokens"], temperature=1.0)
    sync_s = 0.0
    if spec["mode"] != "base":
        apply_lora(model, DTensorLoraConfig(enabled=True, dim=16, alpha=32))
    if spec["mode"] == "merged":
        started = time.perf_counter()
        merge_lora(model)
        unmerge_lora(model)
        merge_lora(model)
        sync_s = (time.perf_counter() - started) / 1.5  # one merge + one unmerge
    times = []
    for repeat in range(3):
        started = time.perf_counter()
        out = generate(model, prompts, params, pad_id=0,
                       generator=torch.Generator().manual_seed(repeat))
        times.append(time.perf_counter() - started)
    tokens = sum(len(t) for t in out.tokens)
    return {"tokens_per_s": tokens / min(times), "sync_s": sync_s}


def run(quick: bool) -> dict:
    spec = {"model": str(bench_model(quick)), "threads": THREADS,
            "vocab": SHAPES[quick]["vocab"], "prompts": 8 if quick else 32,
            "new_tokens": 32 if quick else 64}
    results = {mode: run_worker("benchmarks.generation", {**spec, "mode": mode})
               for mode in ("base", "merged", "split")}
    ratio = results["merged"]["tokens_per_s"] / results["base"]["tokens_per_s"]
    result = {"tokens_per_s": {m: r["tokens_per_s"] for m, r in results.items()},
              "merged_over_base": ratio, "split_over_base":
                  results["split"]["tokens_per_s"] / results["base"]["tokens_per_s"],
              "merge_unmerge_s": results["merged"]["sync_s"], "target": 0.95,
              "met": ratio >= 0.95}
    save("generation", result)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(json.loads(sys.argv[2]))))
    else:
        print(json.dumps(run("--quick" in sys.argv), indent=2))
