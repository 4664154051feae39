"""A small "LoRA without regret" study: GRPO on SmolLM2-135M-Instruct and the few-shot
arithmetic task, LoRA at rank 1, 8 and 64 (every linear layer), LoRA at rank 8 on attention
only, and full fine-tuning, each at three learning rates.

The published claims checked, qualitatively (Schulman et al., "LoRA Without Regret", 2025):
1. in RL even rank 1 keeps up with higher ranks and full fine-tuning;
2. the best LoRA learning rate is about 10x the best full fine-tuning one;
3. attention-only LoRA does worse than LoRA on every layer.

Each arm is one `lora-rl run` of recipes/grpo-smollm2-135m-dtensor-lora.yaml with overrides
(same seed, data and rollout budget); its reward curve is read from its metrics.jsonl. One seed
per arm: differences of a few reward points are within run-to-run noise.

    lora-rl build-model smollm2                          # once
    python -m benchmarks.lora_without_regret             # 15 runs x 8 steps, ~35 min on 2 cores
    python -m benchmarks.lora_without_regret --quick     # the embedded tiny model: plumbing only
    python -m benchmarks.lora_without_regret --table     # table and plot from the saved JSON

Writes results/lora_without_regret[-quick].json and a PNG of the reward curves next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LORA = "policy.dtensor_cfg.lora_cfg"
ATTENTION = "[q_proj,k_proj,v_proj,o_proj]"


@dataclass(frozen=True)
class Arm:
    """One adapter layout, run at each of its learning rates."""

    name: str
    overrides: tuple[str, ...]
    learning_rates: tuple[float, ...]
    full_finetuning: bool = False


LORA_LRS = (1.0e-4, 1.0e-3, 1.0e-2)
FULL_LRS = (1.0e-5, 1.0e-4, 1.0e-3)
"""Decades: the claim is a ratio of ~10 between the best LoRA and full fine-tuning rates."""
ARMS = (  # in order of what a stopped study should still answer
    Arm("rank 8", (f"{LORA}.dim=8", f"{LORA}.alpha=32"), LORA_LRS),
    Arm("full fine-tuning", (f"{LORA}.enabled=false",), FULL_LRS, full_finetuning=True),
    Arm("rank 1", (f"{LORA}.dim=1", f"{LORA}.alpha=32"), LORA_LRS),
    Arm("rank 64", (f"{LORA}.dim=64", f"{LORA}.alpha=32"), LORA_LRS),
    Arm("rank 8, attention only", (f"{LORA}.dim=8", f"{LORA}.alpha=32",
                                   f"{LORA}.match_all_linear=false",
                                   f"{LORA}.target_modules={ATTENTION}"), LORA_LRS),
)
"""alpha is fixed at 32 for every rank, as in the study: with the 1/r scale the rank does not
change the effective learning rate early in training, so one LR grid serves every rank."""

SETTINGS = {
    False: {"recipe": "recipes/grpo-smollm2-135m-dtensor-lora.yaml", "steps": 8, "extra": ()},
    # The tiny recipe continues an SFT adapter; the study starts every arm from the base.
    True: {"recipe": "recipes/grpo-tiny-dtensor-lora.yaml", "steps": 3,
           "extra": ("policy.init_adapter_path=null",)},
}


def _run_arm(arm: Arm, lr: float, quick: bool, work: Path) -> dict[str, Any]:
    settings = SETTINGS[quick]
    log_dir = work / f"{arm.name}-{lr:g}".replace(" ", "_").replace(",", "")
    overrides = [*arm.overrides, f"policy.optimizer.kwargs.lr={lr}",
                 f"grpo.max_num_steps={settings['steps']}", "grpo.val_period=0",
                 "grpo.val_at_start=false", "checkpointing.enabled=false",
                 "logger.progress_bar=false", f"logger.log_dir={log_dir}", *settings["extra"]]
    env = {**os.environ, "LORA_RL_THREADS": os.environ.get("LORA_RL_BENCH_THREADS", "2")}
    started = time.perf_counter()
    # --force: the log directory is a temporary one, outside the repository.
    done = subprocess.run([sys.executable, "-m", "lora_rl", "run", "--force", "--fresh",
                           settings["recipe"], *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"lr": lr, "error": (done.stderr or done.stdout)[-2000:], "wall_s": wall}
    rows = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()
            if line]
    rewards = [row["reward"] for row in rows if "reward" in row]
    return {"lr": lr, "reward": rewards, "wall_s": wall}


def _score(run: dict[str, Any]) -> float | None:
    """Mean reward of the last three steps: where the run got to."""
    rewards = run.get("reward")
    return sum(rewards[-3:]) / len(rewards[-3:]) if rewards else None


def run(quick: bool, on_arm=None) -> dict[str, Any]:
    """Every arm at every learning rate; `on_arm(result so far)` after each arm (the full
    study takes most of an hour: a stopped run keeps the arms it finished)."""
    result: dict[str, Any] = {
        "model": "lora-rl/tiny-llama" if quick else "lora-rl/smollm2-135m-instruct",
        "recipe": SETTINGS[quick]["recipe"], "steps": SETTINGS[quick]["steps"], "arms": {}}
    with tempfile.TemporaryDirectory(prefix="lora-rl-regret-") as tmp:
        for arm in ARMS:
            runs = [_run_arm(arm, lr, quick, Path(tmp)) for lr in arm.learning_rates]
            for one in runs:
                one["final_reward"] = _score(one)
            result["arms"][arm.name] = {"full_finetuning": arm.full_finetuning, "runs": runs,
                                        **_best(runs)}
            result["findings"] = _findings(result["arms"])
            if on_arm is not None:
                on_arm(result)
    return result


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The learning rate whose run got furthest; none when every run ended level (no signal)."""
    scores = [one["final_reward"] for one in runs if one["final_reward"] is not None]
    if not scores or max(scores) == min(scores):
        return {"best_lr": None, "best_final_reward": max(scores) if scores else None}
    best = max((one for one in runs if one["final_reward"] is not None),
               key=lambda one: one["final_reward"])
    return {"best_lr": best["lr"], "best_final_reward": best["final_reward"]}


def _findings(arms: dict[str, Any]) -> dict[str, Any]:
    """The three claims, read off the best run of each arm (None where an arm has no run)."""
    best = {name: arm["best_final_reward"] for name, arm in arms.items()}
    lora_lrs = {name: arm["best_lr"] for name, arm in arms.items()
                if not arm["full_finetuning"] and arm["best_lr"]}
    full_lr = next((arm["best_lr"] for arm in arms.values() if arm["full_finetuning"]), None)
    known = [v for v in best.values() if v is not None]
    return {
        "rank1_minus_best_arm": (best["rank 1"] - max(known)
                                 if best.get("rank 1") is not None else None),
        "best_lora_lr_over_best_full_lr": ({name: lr / full_lr for name, lr in lora_lrs.items()}
                                           if full_lr else None),
        "attention_only_minus_all_layers_rank8": (
            best["rank 8, attention only"] - best["rank 8"]
            if None not in (best.get("rank 8, attention only"), best.get("rank 8")) else None),
    }


def table(result: dict[str, Any]) -> str:
    lrs = sorted({one["lr"] for arm in result["arms"].values() for one in arm["runs"]})
    lines = [f"{result['model']}, GRPO, {result['steps']} steps; cell = mean reward of the "
             "last 3 steps (first step's reward)",
             "| arm | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best lr |",
             "|---|" + "---|" * (len(lrs) + 1)]
    for name, arm in result["arms"].items():
        by_lr = {one["lr"]: one for one in arm["runs"]}
        cells = []
        for lr in lrs:
            one = by_lr.get(lr)
            if one is None:
                cells.append("")
            elif one.get("final_reward") is None:
                cells.append("failed")
            else:
                cells.append(f"{one['final_reward']:.3f} ({one['reward'][0]:.3f})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {arm['best_lr'] or '-'} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = result["arms"]
    figure, axes = plt.subplots(1, len(arms), figsize=(4 * len(arms), 3.4), sharey=True)
    for axis, (name, arm) in zip(axes, arms.items(), strict=True):
        for one in arm["runs"]:
            if one.get("reward"):
                steps = range(1, len(one["reward"]) + 1)
                axis.plot(steps, one["reward"], marker=".", label=f"lr {one['lr']:g}")
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.legend(fontsize=8)
    axes[0].set_ylabel("mean reward")
    figure.suptitle(f"GRPO on {result['model']}: reward per step")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def main() -> None:
    from benchmarks.common import result_path, save

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the embedded tiny model")
    parser.add_argument("--table", action="store_true",
                        help="print the table and redraw the plot from the saved JSON")
    args = parser.parse_args()
    if args.table:
        saved = result_path("lora_without_regret", args.quick)
        result = json.loads(saved.read_text())
    else:
        result = run(args.quick, on_arm=lambda part: save("lora_without_regret", part, args.quick))
        saved = result_path("lora_without_regret", args.quick)
        print(f"wrote {saved}")
    print(table(result))
    for name, arm in result["arms"].items():
        for one in arm["runs"]:
            if "error" in one:
                print(f"{name}, lr {one['lr']:g} failed:\n{one['error']}")
    print(json.dumps(result["findings"], indent=1))
    print(f"wrote {plot(result, saved.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
