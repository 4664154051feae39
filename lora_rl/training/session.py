"""Run plumbing every algorithm shares: resume, checkpoints, metrics, progress, stop checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lora_rl import __version__
from lora_rl.backends.base import TrainingBackend
from lora_rl.checkpoint import latest_checkpoint, prune_checkpoints, save_checkpoint
from lora_rl.config.recipe import RecipeConfig
from lora_rl.data.order import DataOrder
from lora_rl.metrics import MetricsLog
from lora_rl.tensor_guard import restore, resume_check
from lora_rl.training.runtime import Runtime


class NonFiniteLossError(RuntimeError):
    pass


class TrainingSession:
    """Randomness is re-seeded from (seed, step, rank) at every step by the algorithms, so a
    checkpoint needs no RNG state for an exact resume."""

    def __init__(self, cfg: RecipeConfig, backend: TrainingBackend, runtime: Runtime) -> None:
        self.cfg = cfg
        self.backend = backend
        self.runtime = runtime
        self.ckpt = cfg.checkpointing
        self.root = Path(self.ckpt.checkpoint_dir)
        self.metrics: MetricsLog | None = None
        self.last_metrics: dict[str, Any] = {}
        self._progress = None
        self._saved_step: int | None = None
        self.order: DataOrder | None = None
        """The data position, saved with every checkpoint (set by `resume`)."""

    # ---- resume ---------------------------------------------------------------------------

    def resume(self, order: DataOrder) -> int:
        """Restore weights, optimizer and `order` (the data position) from the latest good
        checkpoint; the first step to run (0 for a fresh run). `maybe_save` records `order`."""
        self.order = order
        # a checkpoint of a different setup stops the run; one whose content does not fit this
        # model (names, shapes, dtypes, NaN, state structure) is skipped for the previous one
        check = resume_check(self.backend, self._check_same_run)
        found = latest_checkpoint(self.root, warn=self.say, check=check) \
            if self.ckpt.enabled else None
        step = 0
        if found is not None:
            restore(found, self.backend, order)
            step = found.step
            self._saved_step = step
            self.say(f"resuming from {found.path} (step {step})")
        if self.runtime.is_main:
            log_dir = Path(self.cfg.logger.log_dir)
            self.metrics = MetricsLog(log_dir, step if found else None,
                                      self.cfg.logger.tensorboard_enabled)
        return step

    def _check_same_run(self, state: dict[str, Any], path: Path) -> None:
        ours = run_identity(self.cfg)
        theirs = state.get("run", {})
        changed = [k for k in ours if theirs.get(k) != ours[k]]
        if changed:
            raise ValueError(f"{path} was written by a different setup ({', '.join(changed)} "
                             "differ); resuming would mix runs. Use a new "
                             "checkpointing.checkpoint_dir, or delete the old checkpoints")

    # ---- per step -------------------------------------------------------------------------

    def check_finite(self, step: int, loss: float, update_skipped: bool) -> None:
        """Non-finite loss or gradients never reach the weights (the backend skips the update);
        `on_nonfinite` decides whether the run stops or goes on."""
        if math.isfinite(loss) and not update_skipped:
            return
        what = f"loss is {loss}" if not math.isfinite(loss) else "gradients are not finite"
        if self.cfg.algorithm_config.on_nonfinite == "skip":
            self.say(f"step {step}: {what}; update skipped (on_nonfinite: skip)")
            return
        raise NonFiniteLossError(f"step {step}: {what}; stopping without writing a checkpoint "
                                 "(the last good one is kept). Lower the learning rate or check "
                                 "the data, or set on_nonfinite: skip")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.last_metrics.update(metrics)
        if self.metrics is not None:
            self.metrics.log(step, metrics)
            self._show(step, metrics)

    def maybe_save(self, step: int, final: bool = False) -> None:
        due = final or step % self.ckpt.save_period == 0
        if not self.ckpt.enabled or not due or step == self._saved_step:
            return
        tensors = self.backend.checkpoint_tensors()
        bad = [name for group in tensors.values() for name, t in group.items()
               if t.is_floating_point() and not bool(t.isfinite().all())]
        if bad:
            raise NonFiniteLossError(f"step {step}: {bad[0]} is not finite; not writing a "
                                     "checkpoint (the last good one is kept)")
        if self.runtime.is_main:
            state = {
                "run": run_identity(self.cfg),
                "algorithm": {"data": self.order.state()},
                "optimizer_meta": self.backend.optimizer_meta(),
                "metrics": {k: v for k, v in self.last_metrics.items()
                            if isinstance(v, (int, float))},
                "lora_rl_version": __version__,
            }
            path = save_checkpoint(self.root, step, tensors, state)
            prune_checkpoints(self.root, self.ckpt.keep_top_k, self.ckpt.metric_name,
                              self.ckpt.higher_is_better)
            self.say(f"checkpoint {path}")
        self._saved_step = step
        self.runtime.barrier()

    # ---- output ---------------------------------------------------------------------------

    def say(self, message: str) -> None:
        if self.runtime.is_main:
            print(message, flush=True)

    def start_progress(self, first_step: int, total_steps: int) -> None:
        if not (self.runtime.is_main and self.cfg.logger.progress_bar):
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                  TextColumn("{task.completed}/{task.total}"),
                                  TextColumn("{task.fields[info]}"), TimeRemainingColumn())
        self._task = self._progress.add_task(self.cfg.algorithm, total=total_steps,
                                             completed=first_step, info="")
        self._progress.start()

    def _show(self, step: int, metrics: dict[str, Any]) -> None:
        if self._progress is None:
            return
        info = " ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                        if k in ("loss", "reward", "accuracy", "val_loss", "val_accuracy")
                        and isinstance(v, float))
        self._progress.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self.metrics is not None:
            self.metrics.close()


def run_identity(cfg: RecipeConfig) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed by this recipe."""
    lora = cfg.policy.active_lora
    return {
        "algorithm": cfg.algorithm,
        "backend": cfg.policy.backend,
        "model_name": cfg.policy.model_name,
        "lora": lora.model_dump(mode="json") if lora is not None else None,
    }
