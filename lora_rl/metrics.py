"""Per-step metrics: `metrics.jsonl` (one JSON object per step, rank 0), mirrored to the
experiment trackers the logger section switches on (lora_rl.trackers).

On resume the file is cut back to the resumed step, so the log reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from lora_rl.config.logger import LoggerConfig
from lora_rl.trackers import open_trackers


class MetricsLog:
    def __init__(self, log_dir: Path, resume_step: int | None, logger: LoggerConfig,
                 recipe: dict[str, Any]) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / "metrics.jsonl"
        self._truncate_after(resume_step)
        self._trackers = open_trackers(logger, log_dir, resume_step, recipe)

    def _truncate_after(self, step: int | None) -> None:
        if not self.path.exists():
            return
        if step is None:
            # A fresh run never overwrites an earlier run's log.
            self.path.rename(self.path.with_name(f"metrics.{int(time.time())}.jsonl"))
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if _step_of(line) is not None and _step_of(line) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        scalars = {k: float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self._trackers:
            tracker.log(step, scalars)

    def close(self) -> None:
        for tracker in self._trackers:
            tracker.close()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return value
