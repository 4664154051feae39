"""Experiment trackers fed from the same per-step metrics as `metrics.jsonl`.

`metrics.jsonl` stays the source of truth (`plot`, resume and the tests read it); a tracker is a
mirror of it in TensorBoard, Weights & Biases or MLflow. Tags are namespaced the way those UIs
group panels: `val_loss` -> `val/loss`, everything else `train/<name>`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol

from lora_rl.config.logger import INSTALL_HINTS, TRACKER_PACKAGES, LoggerConfig
from lora_rl.errors import LoraRlError


class TrackerMissingError(LoraRlError, RuntimeError):
    """A tracker is switched on but its client library is not installed."""


class Tracker(Protocol):
    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def tag(key: str) -> str:
    """The tracker tag of a metrics.jsonl key."""
    if key.startswith("val_"):
        return f"val/{key[len('val_'):]}"
    return f"train/{key}"


def missing_trackers(logger: LoggerConfig) -> list[str]:
    """Switched-on trackers whose package cannot be imported (found without importing it)."""
    return [name for name in logger.trackers
            if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None]


def require_trackers(logger: LoggerConfig) -> None:
    """Fail before any model loads when a switched-on tracker cannot run."""
    missing = missing_trackers(logger)
    if missing:
        hints = "; ".join(f"{INSTALL_HINTS[m]} (for logger.{m}_enabled)" for m in missing)
        raise TrackerMissingError(f"logger: {', '.join(missing)} switched on but not installed: "
                                  f"{hints}, or switch it off")


def open_trackers(logger: LoggerConfig, log_dir: Path, resume_step: int | None,
                  recipe: dict[str, Any]) -> list[Tracker]:
    """The trackers the logger section switches on, ready to log (rank 0 only)."""
    require_trackers(logger)
    opened: list[Tracker] = []
    if logger.tensorboard_enabled:
        from lora_rl.trackers.tensorboard import TensorboardTracker

        opened.append(TensorboardTracker(logger.tensorboard, log_dir, resume_step))
    if logger.wandb_enabled:
        from lora_rl.trackers.wandb import WandbTracker

        opened.append(WandbTracker(logger.wandb, log_dir, resume_step, recipe))
    if logger.mlflow_enabled:
        from lora_rl.trackers.mlflow import MlflowTracker

        opened.append(MlflowTracker(logger.mlflow, log_dir, resume_step, recipe))
    return opened


def remembered_run_id(log_dir: Path, tracker: str, resume_step: int | None) -> str | None:
    """The run id a resumed run continues (a fresh run starts a new tracker run)."""
    path = log_dir / f"{tracker}_run_id"
    if resume_step is None or not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def remember_run_id(log_dir: Path, tracker: str, run_id: str) -> None:
    (log_dir / f"{tracker}_run_id").write_text(run_id + "\n", encoding="utf-8")
