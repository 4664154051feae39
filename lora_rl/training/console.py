"""What a run prints (rank 0): a start banner, per-step progress, and an end summary.

On a terminal the progress is a live rich bar; anywhere else (CI, `nohup`, Slurm logs) it is one
plain line per logged step, because a bar redrawn with carriage returns leaves only its final
state in a log file.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SHOWN = ("loss", "reward", "accuracy", "val_loss", "val_accuracy", "gen_kl_error", "lr",
         "grad_norm", "tokens_per_s")
"""Metrics on the console, in this order (metrics.jsonl has them all)."""

_LABELS = {"tokens_per_s": "tok/s"}


def quiet_third_party_progress() -> None:
    """Silence the download/loading bars of huggingface_hub, transformers and datasets: they
    read this at import, so it is set before any of them loads."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def format_value(key: str, value: float) -> str:
    if key == "lr":
        return f"{value:.2e}"
    if key == "tokens_per_s":
        return f"{value:,.0f}"
    return f"{value:.4f}"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def step_line(algorithm: str, step: int, total: int, metrics: Mapping[str, Any],
              eta_s: float | None) -> str:
    """One plain progress line, e.g.
    `sft step 3/400 | loss 2.1345 | lr 5.00e-03 | tok/s 1,234 | eta 0:01:02`."""
    parts = [f"{algorithm} step {step}/{total}"]
    for key in SHOWN:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{_LABELS.get(key, key)} {format_value(key, float(value))}")
    if eta_s is not None:
        parts.append(f"eta {format_duration(eta_s)}")
    return " | ".join(parts)


@dataclass
class _Clock:
    first_step: int
    started: float

    def eta(self, step: int, total: int) -> float | None:
        done = step - self.first_step
        if done <= 0:
            return None
        return (time.monotonic() - self.started) / done * (total - step)


class StepConsole:
    """Per-step output: a rich bar on a terminal (when `progress_bar`), plain lines elsewhere."""

    def __init__(self, algorithm: str, total: int, progress_bar: bool, log_every: int,
                 stream: Any = None) -> None:
        self.algorithm = algorithm
        self.total = total
        self.log_every = log_every
        self.stream = stream or sys.stdout
        self.live = progress_bar and self.stream.isatty()
        self._bar = None
        self._clock: _Clock | None = None

    def start(self, first_step: int) -> None:
        self._clock = _Clock(first_step, time.monotonic())
        if not self.live:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                             TextColumn("{task.completed}/{task.total}"),
                             TextColumn("{task.fields[info]}"), TimeRemainingColumn())
        self._task = self._bar.add_task(self.algorithm, total=self.total, completed=first_step,
                                        info="")
        self._bar.start()

    def step(self, step: int, metrics: Mapping[str, Any]) -> None:
        eta = self._clock.eta(step, self.total) if self._clock else None
        if self._bar is not None:
            info = " ".join(f"{_LABELS.get(k, k)}={format_value(k, float(v))}"
                            for k, v in metrics.items()
                            if k in SHOWN[:6] and isinstance(v, float) and math.isfinite(v))
            self._bar.update(self._task, completed=step, info=info)
            return
        if step % self.log_every == 0 or step == self.total or step == 0:
            print(step_line(self.algorithm, step, self.total, metrics, eta), file=self.stream,
                  flush=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
