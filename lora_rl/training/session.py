"""Run plumbing every algorithm shares: resume, checkpoints, metrics, progress, stop checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lora_rl import __version__
from lora_rl.backends.base import TrainingBackend
from lora_rl.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    prune_checkpoints,
    remove_stale_temp_dirs,
    restore_interrupted_replacements,
    save_checkpoint,
)
from lora_rl.config.recipe import RecipeConfig
from lora_rl.data.order import DataOrder
from lora_rl.errors import LoraRlError
from lora_rl.metrics import MetricsLog
from lora_rl.state_file import CheckpointState, read_state
from lora_rl.tensor_guard import restore, resume_check
from lora_rl.training import preemption, resume_diff
from lora_rl.training.console import StepConsole
from lora_rl.training.runtime import Runtime
from lora_rl.training.summary import end_summary


class NonFiniteLossError(LoraRlError, RuntimeError):
    pass


class ResumeRefusedError(LoraRlError, ValueError):
    """The checkpoint is of another setup: the run stops (it is not skipped for an older one)."""


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
        self.history: list[tuple[int, dict[str, Any]]] = []
        """(step, metrics) logged by this process, for the end summary."""
        self._console: StepConsole | None = None
        self._finished_before = False
        self._saved_step: int | None = None
        self.order: DataOrder | None = None
        """The data position, saved with every checkpoint (set by `resume`)."""
        self.tokenizer_state: dict[str, Any] | None = None
        """How the run encodes text, saved with every checkpoint for exports (set by the
        algorithm's setup)."""
        self.label: str | None = None
        """In a multi-adapter run, the adapter's name: it prefixes this session's output lines
        (and plain progress lines replace the live bar)."""

    # ---- resume ---------------------------------------------------------------------------

    def resume(self, order: DataOrder) -> int:
        """Restore weights, optimizer and `order` (the data position) from the latest good
        checkpoint; the first step to run (0 for a fresh run). `maybe_save` records `order`."""
        self.order = order
        if self.ckpt.enabled and self.runtime.is_main:
            restore_interrupted_replacements(self.root)
            removed = remove_stale_temp_dirs(self.root)
            if removed:
                self.say(f"removed {len(removed)} temporary checkpoint dir(s) left by an "
                         f"interrupted write: {', '.join(p.name for p in removed)}")
        self.runtime.barrier()
        # A checkpoint of a different setup stops the run (_check_recipe); one whose content
        # does not fit this model (names, shapes, dtypes, NaN, state structure) is skipped for
        # the previous one.
        check = resume_check(self.backend, self._check_recipe)
        found = latest_checkpoint(self.root, warn=self.say, check=check) \
            if self.ckpt.enabled else None
        step = 0
        if found is not None:
            self._restore(found)
            step = found.step
            self._saved_step = step
            self.say(f"resuming from {found.path} (step {step})")
        if self.runtime.is_main:
            log_dir = Path(self.cfg.logger.log_dir)
            self.metrics = MetricsLog(log_dir, step if found else None, self.cfg.logger,
                                      self.cfg.model_dump(mode="json", by_alias=True))
        preemption.enter_training()
        return step

    def _restore(self, found: Checkpoint) -> None:
        """Load `found` after checking that the recipe may resume it; recipe edits to the
        optimizer or schedule are applied to the restored state, and every edit is announced."""
        ours = resume_diff.recipe_record(self.cfg)
        saved = read_state(found).recipe or {"adjustable": ours["adjustable"]}
        changes = resume_diff.adjustable_changes(saved, ours)
        optimizer, scheduler = self.backend.optimizer, self.backend.scheduler
        fresh = resume_diff.snapshot_hparams(optimizer, scheduler)
        restore(found, self.backend, self.order)
        if any(change.in_optimizer_state for change in changes):
            lr = resume_diff.apply_recipe_hparams(optimizer, scheduler, fresh)
            applied = f"applied to the restored optimizer and schedule (lr now {lr:.6g})"
        else:
            applied = ""
        for change in changes:
            effect = applied if change.in_optimizer_state else change.effect
            self.say(f"resume: recipe changed since the checkpoint: {change}; {effect}")

    def _check_recipe(self, state: CheckpointState, path: Path) -> None:
        """Refuse (ResumeRefusedError: the run stops) a checkpoint whose fixed settings differ
        from the recipe's, naming each key with both values."""
        saved = state.recipe
        if saved is None:  # written before recipes were recorded
            self._check_same_run(state, path)
            return
        fixed = resume_diff.fixed_changes(saved, resume_diff.recipe_record(self.cfg))
        if fixed:
            raise ResumeRefusedError(resume_diff.refusal(path, fixed))

    def _check_same_run(self, state: CheckpointState, path: Path) -> None:
        ours = run_identity(self.cfg)
        theirs = state.run.model_dump()
        changed = [k for k in ours if theirs.get(k) != ours[k]]
        if changed:
            raise ResumeRefusedError(
                f"{path} was written by a different setup ({', '.join(changed)} differ); "
                "resuming would mix runs. Use a new checkpointing.checkpoint_dir, or delete the "
                "old checkpoints")

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
        self.history.append((step, dict(metrics)))
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
            state = CheckpointState.model_validate({
                "run": run_identity(self.cfg),
                "recipe": resume_diff.recipe_record(self.cfg),
                "algorithm": {"data": self.order.state()},
                "optimizer_meta": self.backend.optimizer_meta(),
                "metrics": {k: v for k, v in self.last_metrics.items()
                            if isinstance(v, (int, float))},
                "lora_rl_version": __version__,
                # how exports encode (data/tokenizer_export)
                "tokenizer": self.tokenizer_state,
            })
            path = save_checkpoint(self.root, step, tensors, state.to_json())
            prune_checkpoints(self.root, self.ckpt.keep_top_k, self.ckpt.metric_name,
                              self.ckpt.higher_is_better)
            self.say(f"checkpoint {path}")
        self._saved_step = step
        self.runtime.barrier()

    def stop_requested(self, step: int) -> bool:
        """Called at every step boundary: True when any rank got a stop signal (SIGTERM,
        SIGINT, SIGHUP). Step `step` is then checkpointed unless it already is, and the
        algorithm's loop ends."""
        if not preemption.agree_to_stop(self.runtime):
            return False
        preemption.mark_stopped()
        if self.ckpt.enabled:
            self.maybe_save(step, final=True)
            saved = f"checkpoint {self.root / f'step_{step}'} is the last completed step"
        else:
            saved = "checkpointing is disabled, nothing saved"
        self.say(f"stopped by {preemption.signal_name()} after step {step}: {saved}; run the "
                 "same command to resume")
        return True

    # ---- output ---------------------------------------------------------------------------

    def say(self, message: str) -> None:
        if self.runtime.is_main:
            self._print(message)

    def _print(self, line: str) -> None:
        print(line if self.label is None else f"[{self.label}] {line}", flush=True)

    def banner(self, data_summary: str) -> None:
        """What is about to run, once, before the first step."""
        if not self.runtime.is_main:
            return
        from lora_rl.config.rules import layout

        cfg, lay = self.cfg, layout(self.cfg)
        report = self.backend.trainable_report()
        trainable, total = report.get("trainable_params"), report.get("total_params")
        self._print(f"lora-rl {cfg.algorithm} | model {cfg.policy.model_name} | "
                    f"{cfg.policy.backend} on {lay.world} process(es): dp {lay.dp} x tp {lay.tp} "
                    f"x pp {lay.pp} | {data_summary}")
        params = ""
        if isinstance(trainable, int) and isinstance(total, int) and total:
            params = f"trainable {trainable:,} of {total:,} parameters " \
                     f"({100 * trainable / total:.2f}%)"
        if "lora_modules" in report:
            params += f" | LoRA on {report['lora_modules']} modules, scale {report['lora_scale']}"
        if params:
            self._print(f"  {params}")
        self._print(f"  logs {cfg.logger.log_dir}/metrics.jsonl | checkpoints "
                    f"{self.root if self.ckpt.enabled else 'off'}")

    def start_progress(self, first_step: int, total_steps: int) -> None:
        if not self.runtime.is_main:
            return
        if first_step >= total_steps:
            self._finished_before = True
            self._print(f"already finished: step {first_step} of {total_steps} is checkpointed "
                        f"in {self.root}; nothing to train. To train again from scratch use a "
                        "new checkpointing.checkpoint_dir (or delete that one)")
            return
        name = self.cfg.algorithm if self.label is None else f"[{self.label}] {self.cfg.algorithm}"
        self._console = StepConsole(name, total_steps,
                                    self.cfg.logger.progress_bar and self.label is None,
                                    self.cfg.logger.log_every)
        self._console.start(first_step)

    def _show(self, step: int, metrics: dict[str, Any]) -> None:
        if self._console is not None:
            self._console.step(step, metrics)

    def finish(self) -> None:
        """The end summary: last and best metrics, where everything went, what to run next."""
        if self._console is not None:
            self._console.stop()
            self._console = None
        if not self.runtime.is_main or self._finished_before:
            return
        for line in end_summary(self.cfg, self.history, self._saved_step):
            self._print(line)

    def close(self) -> None:
        if self._console is not None:
            self._console.stop()
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
