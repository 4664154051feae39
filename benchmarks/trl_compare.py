"""lora-rl vs TRL SFTTrainer + PEFT LoRA: training tokens per second on the same model, data,
batch, sequence length, LoRA rank/targets and threads, each system in its own process.
Target: lora-rl >= 1.3x TRL.

TRL's SFTConfig turns gradient checkpointing on by default; both systems are measured with
activation recompute off and with it on (TRL's default), each pair under the same setting."""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time

from benchmarks.common import REPEATS, SHAPES, THREADS, bench_model, run_worker, save

RANK, ALPHA = 16, 32
TARGET = 1.3
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _trl_worker(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(spec["threads"])
    generator = torch.Generator().manual_seed(0)
    rows = spec["batch"] * (spec["steps"] + 2)
    ids = torch.randint(0, spec["vocab"], (rows, spec["seq"]), generator=generator).tolist()
    dataset = Dataset.from_dict({"input_ids": ids})
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    stamps: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    args = SFTConfig(output_dir=spec["out"], per_device_train_batch_size=spec["batch"],
                     max_steps=spec["steps"] + 2, learning_rate=1e-4, logging_steps=1000,
                     save_strategy="no", report_to=[], max_length=spec["seq"], packing=False,
                     use_cpu=True, dataloader_num_workers=0, bf16=False, fp16=False,
                     gradient_checkpointing=spec["activation_checkpointing"])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                         peft_config=LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                target_modules=TARGETS, task_type="CAUSAL_LM"),
                         callbacks=[Timer()])
    trainer.train()
    steps = [b - a for a, b in itertools.pairwise(stamps[1:])]  # after 2 warm-up steps
    fastest = min(steps)  # as for lora-rl (benchmarks.train_step)
    return {"step_s": fastest, "step_s_median": statistics.median(steps),
            "tokens_per_s": spec["batch"] * spec["seq"] / fastest}


def _compare(spec: dict, out: str) -> dict:
    ours, theirs = [], []
    for _ in range(REPEATS):
        ours.append(run_worker("benchmarks.train_step", {**spec, "lora": True}))
        theirs.append(run_worker("benchmarks.trl_compare", {**spec, "out": out}))
    best_ours = max(r["tokens_per_s"] for r in ours)
    best_theirs = max(r["tokens_per_s"] for r in theirs)
    ratio = best_ours / best_theirs
    return {"lora_rl_tokens_per_s": best_ours, "trl_tokens_per_s": best_theirs,
            "ratio": ratio, "met": ratio >= TARGET}


def run(quick: bool) -> dict:
    import tempfile

    shape = SHAPES[quick]
    spec = {**shape, "model": str(bench_model(quick)), "threads": THREADS}
    with tempfile.TemporaryDirectory() as out:
        result = {
            "shape": shape, "target": TARGET,
            "setup": f"LoRA r={RANK} alpha={ALPHA} on {', '.join(TARGETS)}; fp32; "
                     f"{THREADS} threads; batch {shape['batch']} x {shape['seq']} tokens",
            "stored_activations": _compare({**spec, "activation_checkpointing": False}, out),
            "activation_checkpointing": _compare({**spec, "activation_checkpointing": True}, out),
        }
    save("trl_compare", result, quick)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_trl_worker(json.loads(sys.argv[2]))))
    else:
        print(json.dumps(run("--quick" in sys.argv), indent=2))
