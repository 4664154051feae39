"""TensorBoard events under `logger.log_dir/<tensorboard.log_dir>`."""

from __future__ import annotations

from pathlib import Path

from lora_rl.config.logger import TensorboardConfig
from lora_rl.trackers import tag


class TensorboardTracker:
    def __init__(self, cfg: TensorboardConfig, log_dir: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events a crashed run wrote after the checkpoint it resumes from, so
        # the curves read as one run, like metrics.jsonl.
        purge = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(str(log_dir / cfg.log_dir), purge_step=purge)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(tag(key), value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
