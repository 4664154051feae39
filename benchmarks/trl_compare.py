"""lora-rl vs TRL SFTTrainer + PEFT LoRA: training tokens per second on the same model, data,
batch, sequence length, LoRA rank/targets and threads. Target: lora-rl >= 1.3x TRL.

Both run in one process and take turns step by step: after each TRL step a callback runs one
lora-rl step, and TRL's next step is timed from the end of it. The machine's speed drifts by
15-30 % within minutes, so the ratio is the median over those adjacent pairs of steps.

TRL's SFTConfig turns gradient checkpointing on by default; both systems are measured with
activation recompute off and with it on (TRL's default), each pair under the same setting."""

from __future__ import annotations

import json
import sys
import time

from benchmarks.common import SHAPES, THREADS, bench_model, paired_ratio, run_worker, save
from benchmarks.train_step import WARMUP_STEPS, build_step, step_summary, timed

RANK, ALPHA = 16, 32
TARGET = 1.3
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _worker(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(spec["threads"])
    # lora-rl's LoRA step, configured as TRL's below: rank, alpha, every linear of the blocks.
    our_step = build_step(spec, lora=True)[1]
    trl_steps = spec["steps"] + WARMUP_STEPS + 1  # the first has no lora-rl step before it
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec["vocab"], (spec["batch"] * trl_steps, spec["seq"]),
                        generator=generator).tolist()
    dataset = Dataset.from_dict({"input_ids": ids})
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    trl_ends: list[float] = []
    ours: list[float] = []
    ours_ends: list[float] = []

    class TakeTurns(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            trl_ends.append(time.perf_counter())
            if state.global_step < args.max_steps:
                ours.append(timed(our_step))
                ours_ends.append(time.perf_counter())

    args = SFTConfig(output_dir=spec["out"], per_device_train_batch_size=spec["batch"],
                     max_steps=trl_steps, learning_rate=1e-4, logging_steps=1000,
                     save_strategy="no", report_to=[], max_length=spec["seq"], packing=False,
                     use_cpu=True, dataloader_num_workers=0, bf16=False, fp16=False,
                     gradient_checkpointing=spec["activation_checkpointing"])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                         peft_config=LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                target_modules=TARGETS, task_type="CAUSAL_LM"),
                         callbacks=[TakeTurns()])
    trainer.train()
    # TRL's step i+1 runs right after lora-rl's step i; both lists drop their warm-up steps.
    trl = [end - start for start, end in zip(ours_ends, trl_ends[1:], strict=True)]
    return {"trl": trl[WARMUP_STEPS:], "lora_rl": ours[WARMUP_STEPS:]}


def _compare(spec: dict, out: str) -> dict:
    times = run_worker("benchmarks.trl_compare", {**spec, "out": out})
    tokens = spec["batch"] * spec["seq"]
    # lora-rl tokens/s over TRL tokens/s = TRL step time over lora-rl step time
    ratio = paired_ratio(times["trl"], times["lora_rl"])
    return {"lora_rl": step_summary(times["lora_rl"], tokens),
            "trl": step_summary(times["trl"], tokens), "ratio": ratio, "met": ratio >= TARGET}


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
        print(json.dumps(_worker(json.loads(sys.argv[2]))))
    else:
        print(json.dumps(run("--quick" in sys.argv), indent=2))
