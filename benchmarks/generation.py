"""Torch generator throughput: LoRA merged into the weights (merge-weight) vs the base model vs
the adapter kept split, same prompts and sampling. Target: merged / base >= 0.95. Also the cost of
a merge + unmerge (the per-step weight sync of GRPO's merge-weight mode).

Where vLLM imports (the tools/vllm_tier.sh venv), a `vllm` section adds, per weight-sync mode:
vLLM vs torch-engine tokens/s on the same policy, the sync time, and the parity of vLLM's token
log-probs with the trainer's (max abs difference, and gen_kl_error as GRPO defines it but summed
in float64), and weight sync as a share of real GRPO steps of the tiny recipe (target <= 5 %).
`python -m benchmarks.generation --vllm [--quick] [--tiny] [--tp N] [--engines-only]` runs only
that section (saved as generation_vllm.json, or generation_vllm_tpN.json), `--tiny` on the
embedded tiny Llama instead of the benchmark shape, `--tp N` with a tensor-parallel engine (N
worker processes; the quick shape's 4 heads of 64 split for N = 2), `--engines-only` without
the GRPO runs (the TP section never has them)."""

from __future__ import annotations

import json
import sys
import time

from benchmarks.common import (
    SHAPES,
    THREADS,
    bench_model,
    median,
    paired_ratio,
    run_worker,
    save,
)


def _worker(spec: dict) -> dict:
    """The three models in one process, generating in turns, `rounds` times, the order rotating
    each round. The machine's speed drifts by 15-30 % over tens of seconds, so separate processes
    run one after another would compare different machines; a ratio is taken within each round
    (models a few seconds apart) and the median over rounds is reported."""
    import torch
    from transformers import AutoModelForCausalLM

    from lora_rl.config.lora import DTensorLoraConfig
    from lora_rl.generation.torch_generator import SamplingParams, generate
    from lora_rl.lora import apply_lora, merge_lora, unmerge_lora

    torch.set_num_threads(spec["threads"])
    models = {}
    for mode in ("base", "merged", "split"):
        models[mode] = AutoModelForCausalLM.from_pretrained(spec["model"]).eval()
        if mode != "base":
            apply_lora(models[mode], DTensorLoraConfig(enabled=True, dim=16, alpha=32))
    started = time.perf_counter()
    merge_lora(models["merged"])
    unmerge_lora(models["merged"])
    merge_lora(models["merged"])
    sync_s = (time.perf_counter() - started) / 1.5  # one merge + one unmerge
    prompts = torch.randint(3, spec["vocab"], (spec["prompts"], 16),
                            generator=torch.Generator().manual_seed(0)).tolist()
    params = SamplingParams(max_new_tokens=spec["new_tokens"], temperature=1.0)
    rounds: list[dict[str, float]] = []
    names = list(models)
    for repeat in range(spec["rounds"]):
        rates = {}
        for mode in names[repeat % 3:] + names[:repeat % 3]:
            started = time.perf_counter()
            out = generate(models[mode], prompts, params, pad_id=0,
                           generator=torch.Generator().manual_seed(repeat))
            rates[mode] = sum(len(t) for t in out.tokens) / (time.perf_counter() - started)
        rounds.append(rates)
    return {"rounds": rounds, "merge_unmerge_s": sync_s}


def vllm_available() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


def _vllm_policy(spec: dict):
    """A single-process DTensor LoRA policy (rank 16, B drawn non-zero) and its tokenizer, from
    a validated GRPO recipe that selects vLLM with the requested sync mode."""
    import torch

    from lora_rl.algorithms import backend_inputs
    from lora_rl.backends import build_backend
    from lora_rl.config.recipe import RecipeConfig
    from lora_rl.data.sources import load_tokenizer
    from lora_rl.lora import iter_lora_layers
    from lora_rl.training.runtime import Runtime

    cfg = RecipeConfig.model_validate({
        "grpo": {"num_prompts_per_step": spec["prompts"], "num_generations_per_prompt": 1},
        "policy": {
            "model_name": spec["model"], "precision": "float32",
            "train_global_batch_size": spec["prompts"], "train_micro_batch_size": 1,
            "max_total_sequence_length": 16 + spec["new_tokens"],
            "dtensor_cfg": {"enabled": True, "_v2": True, "lora_cfg": {
                "enabled": True, "dim": 16, "alpha": 32, "use_triton": False}},
            "generation": {"backend": "vllm", "lora_weight_sync": spec["mode"],
                           "max_new_tokens": spec["new_tokens"],
                           "vllm_cfg": {"tensor_parallel_size": spec.get("tp", 1)}}},
        "data": {"dataset_name": "tiny-arithmetic"},
        "env": {"reward": "exact_match"}})
    backend = build_backend(backend_inputs(cfg), Runtime(0, 1, 0, torch.device("cpu")))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in iter_lora_layers(backend.model):
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape,
                                                  generator=generator) * 0.05)
    return cfg, backend, load_tokenizer(cfg.policy, cfg.data)


def _vllm_worker(spec: dict) -> dict:
    import torch

    from lora_rl.data.examples import Example
    from lora_rl.data.sources import collate
    from lora_rl.generation.engines import TorchEngine
    from lora_rl.generation.torch_generator import SamplingParams
    from lora_rl.generation.vllm_engine import VllmEngine

    torch.set_num_threads(spec["threads"])
    cfg, backend, tokenizer = _vllm_policy(spec)
    prompts = torch.randint(3, spec["vocab"], (spec["prompts"], 16),
                            generator=torch.Generator().manual_seed(0)).tolist()
    # No stop tokens: every response runs to max_new_tokens, so both engines do equal work.
    params = SamplingParams(max_new_tokens=spec["new_tokens"], temperature=1.0)
    engine = VllmEngine(cfg.policy, backend, tokenizer,
                        cfg.grpo.num_prompts_per_step * cfg.grpo.num_generations_per_prompt)
    try:
        engine.sample(prompts, params, torch.Generator().manual_seed(99))  # warm-up
        runs = [engine.sample(prompts, params, torch.Generator().manual_seed(r))
                for r in range(spec["repeats"])]
    finally:
        engine.close()
    torch_engine = TorchEngine(cfg.policy, backend, tokenizer)
    torch_runs = [torch_engine.sample(prompts, params, torch.Generator().manual_seed(r))
                  for r in range(spec["repeats"])]

    # Parity of the last vLLM sample with the trainer's log-probs of the same tokens.
    out = runs[-1][0]
    batch = collate([Example(tuple(p + t), tuple([0] * len(p) + [1] * len(t)))
                     for p, t in zip(prompts, out.tokens, strict=True)], tokenizer.pad_token_id)
    with backend.eval_mode():
        trainer = backend.token_logprobs(batch).double()
    gen = torch.zeros_like(trainer)
    for row, (p, values) in enumerate(zip(prompts, out.logprobs, strict=True)):
        gen[row, len(p) - 1:len(p) - 1 + len(values)] = torch.tensor(values, dtype=torch.float64)
    mask = batch.target_mask.bool()
    delta = (trainer - gen)[mask]
    tokens = sum(len(t) for t in out.tokens)
    return {
        "engine_start_s": engine.start_time_s,
        "vllm_tokens_per_s": max(tokens / t["generation_time_s"] for _, t in runs),
        "torch_tokens_per_s": max(sum(len(x) for x in o.tokens) / t["generation_time_s"]
                                  for o, t in torch_runs),
        "vllm_weight_sync_s": median([t["weight_sync_time_s"] for _, t in runs]),
        "torch_weight_sync_s": median([t["weight_sync_time_s"] for _, t in torch_runs]),
        "logprob_max_abs_diff": float(delta.abs().max()),
        "gen_kl_error": float((delta.exp() - delta - 1).mean()),
    }


def run_vllm(quick: bool, tiny: bool = False, tp: int = 1, grpo_share: bool = True) -> dict:
    if tiny:
        from lora_rl.model_source import cache_root
        from lora_rl.tiny import ensure_tiny_model

        model = ensure_tiny_model(cache_root())
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(model).vocab_size
    else:
        model, vocab = bench_model(quick), SHAPES[quick]["vocab"]
    spec = {"engine": "vllm", "model": str(model), "threads": THREADS, "vocab": vocab,
            "prompts": 8 if quick or tiny else 32, "new_tokens": 32 if quick or tiny else 64,
            "repeats": 3, "tp": tp}
    out = {mode: run_worker("benchmarks.generation", {**spec, "mode": mode})
           for mode in ("merge", "split")}
    result = {"model": "tiny-llama" if tiny else f"bench-{'quick' if quick else 'full'}",
              "tensor_parallel_size": tp, "prompts": spec["prompts"],
              "new_tokens": spec["new_tokens"], **out}
    if tp == 1 and grpo_share:  # real runs of the tiny recipe, with the in-process engine
        result["grpo_sync_share"] = grpo_sync_share(steps=4 if quick or tiny else 10)
    return result


SYNC_SHARE_TARGET = 0.05


def grpo_sync_share(steps: int) -> dict:
    """Weight sync as a share of the whole GRPO step (generation + training), from real runs of
    the tiny GRPO recipe: median over steps of weight_sync_time_s / step_time_s, per engine."""
    import subprocess
    import tempfile
    from pathlib import Path

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "grpo-tiny-dtensor-lora.yaml"
    shares = {}
    for engine, sync in (("vllm", "merge"), ("vllm", "split"), ("torch", "merge")):
        with tempfile.TemporaryDirectory() as work:
            # A fresh adapter stands in for the SFT one: sync cost does not depend on its values.
            subprocess.run([sys.executable, "-m", "lora_rl", "run", str(recipe),
                            f"policy.generation.backend={engine}",
                            f"policy.generation.lora_weight_sync={sync}",
                            "policy.init_adapter_path=null", f"grpo.max_num_steps={steps + 1}",
                            "grpo.val_period=0", "grpo.val_at_start=false",
                            "checkpointing.enabled=false", "logger.log_dir=logs",
                            "logger.progress_bar=false"],
                           cwd=work, check=True, capture_output=True, timeout=1800)
            rows = [json.loads(line) for line in (Path(work) / "logs" / "metrics.jsonl").open()]
            rows = [r for r in rows if "step_time_s" in r][1:]  # step 1 includes warm-up
        share = median([r["weight_sync_time_s"] / r["step_time_s"] for r in rows])
        shares[f"{engine}_{sync}"] = {
            "share": share, "sync_s": median([r["weight_sync_time_s"] for r in rows]),
            "step_s": median([r["step_time_s"] for r in rows]), "met": share <= SYNC_SHARE_TARGET}
    return {"target": SYNC_SHARE_TARGET, **shares}


def run(quick: bool) -> dict:
    spec = {"model": str(bench_model(quick)), "threads": THREADS,
            "vocab": SHAPES[quick]["vocab"], "prompts": 8 if quick else 32,
            "new_tokens": 32 if quick else 64}
    measured = run_worker("benchmarks.generation", {**spec, "rounds": 3 if quick else 9})
    rounds = measured["rounds"]

    def over_base(mode: str) -> float:
        return paired_ratio([r[mode] for r in rounds], [r["base"] for r in rounds])

    ratio = over_base("merged")
    result = {"tokens_per_s": {mode: max(r[mode] for r in rounds) for mode in rounds[0]},
              "rounds": rounds, "merged_over_base": ratio, "split_over_base": over_base("split"),
              "merge_unmerge_s": measured["merge_unmerge_s"], "target": 0.95,
              "met": ratio >= 0.95}
    if vllm_available():
        result["vllm"] = run_vllm(quick)
    save("generation", result, quick)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_spec = json.loads(sys.argv[2])
        worker = _vllm_worker if worker_spec.get("engine") == "vllm" else _worker
        print(json.dumps(worker(worker_spec)))
    elif "--vllm" in sys.argv:
        # Run from the vLLM venv (tools/vllm_tier.sh); saved apart from the torch-only results.
        # --tp N: a tensor-parallel engine (its N workers in their own processes).
        tp = int(sys.argv[sys.argv.index("--tp") + 1]) if "--tp" in sys.argv else 1
        # --engines-only: no GRPO runs (the sync share), e.g. to compare --tp 1 and 2 quickly.
        share = "--engines-only" not in sys.argv
        vllm_result = run_vllm("--quick" in sys.argv, tiny="--tiny" in sys.argv, tp=tp,
                               grpo_share=share)
        name = "generation_vllm" if tp == 1 else f"generation_vllm_tp{tp}"
        save(name if share else f"{name}_engines", vllm_result, "--quick" in sys.argv)
        print(json.dumps(vllm_result, indent=2))
    else:
        print(json.dumps(run("--quick" in sys.argv), indent=2))
