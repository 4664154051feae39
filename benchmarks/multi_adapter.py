"""Multi-adapter runs: one job training an SFT and a DPO adapter on one shared base
(`lora-rl run sft.yaml dpo.yaml`) against the two solo runs, on SmolLM2-135M-Instruct.

Each run is its own `python -m lora_rl run` process; its peak RSS comes from `os.wait4` (the
kernel's high-water mark of that process, model loading included, as a user sees it). Target:
joint peak <= 0.65 x (solo SFT peak + solo DPO peak). Time: the joint job's wall time against
the two solo runs' wall times added (what running them one after the other costs), and each
adapter's mean step time in the joint job against its solo run.

    python -m benchmarks.multi_adapter            # SmolLM2-135M (lora-rl build-model smollm2)
    python -m benchmarks.multi_adapter --quick    # the embedded tiny model, seconds

The quick variant checks the plumbing; its memory ratio is dominated by the interpreter and
torch themselves (the tiny base is 1 MiB), so only the SmolLM2 figure answers the target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.65
SMOLLM2 = "lora-rl/smollm2-135m-instruct"
STEPS = {True: 4, False: 8}


def _recipes(work: Path, quick: bool) -> dict[str, list[str]]:
    """name -> `lora-rl run` arguments (recipe + overrides, written as small files)."""
    steps = STEPS[quick]
    model = [] if quick else [f"policy.model_name: {SMOLLM2}",
                              "policy.tokenizer.chat_template: null"]
    common = ["logger.progress_bar: false", "checkpointing.enabled: false"]
    specs = {
        "sft": ("sft-tiny-dtensor-lora.yaml", [f"sft.max_num_steps: {steps}", "sft.val_period: 0",
                                               "sft.val_at_start: false",
                                               "policy.optimizer.kwargs.lr: 1.0e-3"]),
        "dpo": ("dpo-tiny-dtensor-lora.yaml", [f"dpo.max_num_steps: {steps}", "dpo.val_period: 0",
                                               "dpo.val_at_start: false",
                                               "policy.dtensor_cfg.lora_cfg.dim: 4",
                                               "policy.optimizer.kwargs.lr: 1.0e-3"]),
    }
    out = {}
    for name, (parent, keys) in specs.items():
        # `defaults:` parents are read next to the recipe.
        (work / parent).write_text((ROOT / "recipes" / parent).read_text())
        lines = [f"defaults: {parent}",
                 *_nested([*model, *common, *keys,
                           f"logger.log_dir: logs/{name}",
                           f"checkpointing.checkpoint_dir: ck/{name}"])]
        path = work / f"{name}.yaml"
        path.write_text("\n".join(lines) + "\n")
        out[name] = [str(path)]
    return out


def _nested(entries: list[str]) -> list[str]:
    """`a.b.c: v` lines as nested YAML."""
    tree: dict[str, Any] = {}
    for entry in entries:
        key, _, value = entry.partition(": ")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    lines: list[str] = []

    def emit(node: dict[str, Any], indent: int) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                lines.append(" " * indent + f"{key}:")
                emit(value, indent + 2)
            else:
                lines.append(" " * indent + f"{key}: {value}")

    emit(tree, 0)
    return lines


def _run(args: list[str], work: Path) -> dict[str, float]:
    """One `lora-rl run` process: wall time and peak RSS (MiB)."""
    env = {**os.environ, "LORA_RL_THREADS": os.environ.get("LORA_RL_BENCH_THREADS", "2")}
    log = work / "run.log"
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lora_rl", "run", *args], cwd=work,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
        # wait4, not wait: this child's own rusage, so its peak RSS alone (KiB on Linux).
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"lora-rl run {' '.join(args)} failed:\n{log.read_text()[-3000:]}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024}


def _step_time(work: Path, name: str) -> float:
    rows = [json.loads(line) for line in (work / "logs" / name / "metrics.jsonl")
            .read_text().splitlines() if line]
    times = [r["step_time_s"] for r in rows if "step_time_s" in r]
    return sum(times[1:]) / max(len(times) - 1, 1)  # the first step warms up


def run(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lora-rl-multi-") as tmp:
        work = Path(tmp)
        recipes = _recipes(work, quick)
        solo = {}
        for name, args in recipes.items():
            solo[name] = _run(args, work)
            solo[name]["step_time_s"] = _step_time(work, name)
            os.rename(work / "logs" / name, work / "logs" / f"solo-{name}")
        joint = _run([*recipes["sft"], *recipes["dpo"]], work)
        joint["step_time_s"] = {name: _step_time(work, name) for name in recipes}
    solo_peaks = sum(s["peak_rss_mib"] for s in solo.values())
    ratio = joint["peak_rss_mib"] / solo_peaks
    return {
        "model": "lora-rl/tiny-llama" if quick else SMOLLM2,
        "steps_per_adapter": STEPS[quick],
        "solo": solo,
        "joint": joint,
        "memory_ratio": ratio,
        "memory_target": TARGET,
        "met": ratio <= TARGET,
        "wall_ratio": joint["wall_s"] / sum(s["wall_s"] for s in solo.values()),
        "step_time_ratio": {name: joint["step_time_s"][name] / solo[name]["step_time_s"]
                            for name in solo},
    }


def _table(result: dict[str, Any]) -> str:
    solo, joint = result["solo"], result["joint"]
    lines = [f"model {result['model']}, {result['steps_per_adapter']} steps per adapter",
             f"{'run':<16}{'peak RSS MiB':>14}{'wall s':>10}{'step s (sft/dpo)':>20}"]
    for name, part in solo.items():
        lines.append(f"{'solo ' + name:<16}{part['peak_rss_mib']:>14.0f}{part['wall_s']:>10.1f}"
                     f"{part['step_time_s']:>20.3f}")
    steps = joint["step_time_s"]
    lines.append(f"{'joint sft+dpo':<16}{joint['peak_rss_mib']:>14.0f}{joint['wall_s']:>10.1f}"
                 f"{steps['sft']:>11.3f}/{steps['dpo']:.3f}")
    lines.append(f"memory: joint / (solo sft + solo dpo) = {result['memory_ratio']:.3f} "
                 f"(target <= {TARGET}: {'met' if result['met'] else 'not met'})")
    lines.append(f"time: joint wall / (solo walls added) = {result['wall_ratio']:.3f}; "
                 "joint step / solo step: " + ", ".join(
                     f"{k} {v:.3f}" for k, v in result["step_time_ratio"].items()))
    return "\n".join(lines)


def main() -> None:
    from benchmarks.common import save

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the embedded tiny model")
    args = parser.parse_args()
    result = run(args.quick)
    print(_table(result))
    print(f"wrote {save('multi_adapter', result, args.quick)}")


if __name__ == "__main__":
    main()
