"""Weights & Biases: one W&B run per lora-rl run; a resumed run continues the same W&B run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_rl.config.logger import WandbConfig
from lora_rl.trackers import remember_run_id, remembered_run_id, tag


class WandbTracker:
    def __init__(self, cfg: WandbConfig, log_dir: Path, resume_step: int | None,
                 recipe: dict[str, Any]) -> None:
        import wandb

        run_id = remembered_run_id(log_dir, "wandb", resume_step)
        self._run = wandb.init(
            project=cfg.project, name=cfg.name, entity=cfg.entity, group=cfg.group,
            tags=cfg.tags or None, mode=cfg.mode, dir=str(log_dir), config=recipe,
            id=run_id, resume="allow" if run_id else None,
            # lora-rl prints its own per-step lines; W&B's console capture would repeat them.
            settings=wandb.Settings(console="off", silent=True),
        )
        remember_run_id(log_dir, "wandb", self._run.id)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log({tag(k): v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self._run.finish()
