"""The lines a finished run ends with: last and best metrics and where its outputs are (the
commands that use them: lora_rl.run_plan.next_commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_rl.config.recipe import RecipeConfig
from lora_rl.training.console import format_value

BEST = {"val_loss": min, "val_accuracy": max, "reward": max, "accuracy": max, "loss": min}
"""Metrics whose best value is worth a line, and which way is better."""

LAST = ("loss", "reward", "val_loss", "val_accuracy", "gen_kl_error")


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def end_summary(cfg: RecipeConfig, history: list[tuple[int, dict[str, Any]]],
                saved_step: int | None) -> list[str]:
    if not history:
        return []
    last_step = history[-1][0]
    lines = [f"finished {cfg.algorithm} at step {last_step}"]
    latest: dict[str, Any] = {}
    for _, metrics in history:
        latest.update(metrics)
    last = [f"{k} {format_value(k, float(latest[k]))}" for k in LAST if _numeric(latest.get(k))]
    if last:
        lines.append("  last:  " + " | ".join(last))
    best = []
    for key, pick in BEST.items():
        points = [(m[key], step) for step, m in history if _numeric(m.get(key))]
        if len(points) > 1:
            value, step = pick(points, key=lambda p: p[0])
            best.append(f"{key} {format_value(key, float(value))} (step {step})")
    if best:
        lines.append("  best:  " + " | ".join(best))
    log_dir = Path(cfg.logger.log_dir)
    lines.append(f"  metrics     {log_dir / 'metrics.jsonl'}")
    ckpt_root = Path(cfg.checkpointing.checkpoint_dir)
    if cfg.checkpointing.enabled and saved_step is not None:
        lines.append(f"  checkpoint  {ckpt_root / f'step_{saved_step}'}")
    return lines
