"""What `lora-rl run` will do and did, around the training itself: the plan a dry run shows,
`--fresh`, and the commands a finished run suggests next."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from lora_rl.config.recipe import RecipeConfig


def _step_dirs(root: Path) -> list[Path]:
    from lora_rl.checkpoint import step_dirs

    return [path for _, path in step_dirs(root)]


def plan_lines(cfg: RecipeConfig, fresh: bool) -> list[str]:
    """Where the run would start and what it would write (nothing is trained)."""
    algo = cfg.algorithm_config
    root = Path(cfg.checkpointing.checkpoint_dir)
    lines = ["plan (--dry-run: nothing runs):"]
    found = _step_dirs(root) if cfg.checkpointing.enabled else []
    if found and not fresh:
        lines.append(f"  resume from the latest good checkpoint in {root} "
                     f"(newest: {found[-1].name}); --fresh would start over")
    elif found:
        lines.append(f"  start at step 0; {root} would be moved aside first (--fresh)")
    else:
        lines.append("  start at step 0 (no earlier checkpoints)")
    lines.append(f"  train up to {algo.max_num_steps} steps; checkpoints "
                 + (f"every {cfg.checkpointing.save_period} steps in {root}"
                    if cfg.checkpointing.enabled else "off"))
    lines.append(f"  metrics to {Path(cfg.logger.log_dir) / 'metrics.jsonl'}"
                 + "".join(f", {t}" for t in cfg.logger.trackers))
    return lines


def move_aside(cfg: RecipeConfig) -> Path | None:
    """Rename an earlier run's checkpoint_dir out of the way (kept, never deleted)."""
    root = Path(cfg.checkpointing.checkpoint_dir)
    if not _step_dirs(root):
        return None
    target = root.with_name(f"{root.name}.before-fresh-{time.strftime('%Y%m%d-%H%M%S')}")
    root.rename(target)
    return target


def next_commands(cfg: RecipeConfig, recipe: Path, overrides: list[str]) -> list[str]:
    """Commands that use what the run wrote, ready to paste."""
    sets = "".join(f" --set {shlex.quote(o)}" for o in overrides)
    recipe_arg = shlex.quote(str(recipe))
    lines = ["next:", f"  lora-rl plot {shlex.quote(cfg.logger.log_dir)}"]
    root = Path(cfg.checkpointing.checkpoint_dir)
    # generate, eval and export read LoRA checkpoints.
    if cfg.checkpointing.enabled and cfg.policy.active_lora is not None and _step_dirs(root):
        ckpt = shlex.quote(str(root))
        lines.append(f"  lora-rl generate {recipe_arg}{sets} \"your prompt\"")
        if cfg.algorithm != "dpo":
            lines.append(f"  lora-rl eval {recipe_arg}{sets}")
        for fmt, suffix in (("peft", "adapter"), ("merged", "merged")):
            lines.append(f"  lora-rl export --checkpoint {ckpt} --format {fmt} "
                         f"--out {shlex.quote(f'{root.name}-{suffix}')}")
    return lines
