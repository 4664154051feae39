"""The training loop, written once; the algorithms fill in its hooks.

`setup`: tokenizer and renderer -> `prepare()` (the algorithm's data and helpers; it returns the
training items) -> data order and resume -> start banner.

`train`, per step: the next `items_per_step()` item indices (the run ends after
`max_num_epochs`) -> `collect(step, indices)` (GRPO samples its rollouts here, under its own
seed) -> `seed_step(seed, step, rank)` -> `train_step(batch)` -> `StepMetrics` -> finiteness
check -> `validate()` when due -> log, checkpoint, stop check. The loop times the step from
`collect` to the end of `train_step` (`step_time_s`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lora_rl.backends.base import StepStats, TrainingBackend
from lora_rl.config.recipe import RecipeConfig
from lora_rl.data.examples import Limits
from lora_rl.data.order import DataOrder
from lora_rl.data.samples import Sample
from lora_rl.data.sources import limits, load_samples, load_tokenizer, rank_slice, renderer
from lora_rl.data.specs import Split
from lora_rl.data.tokenizer_export import tokenizer_state
from lora_rl.training.runtime import Runtime, seed_step
from lora_rl.training.session import TrainingSession


@dataclass(frozen=True)
class StepMetrics:
    """What one training step reports; the loop adds the step's timing and validation."""

    loss: float
    """The step's loss over the whole global batch (what `on_nonfinite` checks)."""
    update: StepStats
    """The (last) optimizer update of the step."""
    values: dict[str, float] = field(default_factory=dict)
    """The algorithm's own metrics, by their metrics.jsonl key (e.g. DPO's `accuracy`)."""
    tokens: int | None = None
    """Tokens the step trained on (all ranks), reported as `tokens_per_s`; None: not reported."""

    def record(self, step_time_s: float) -> dict[str, Any]:
        """The step's metrics.jsonl entries."""
        row: dict[str, Any] = {"loss": self.loss, "lr": self.update.lr,
                               "grad_norm": self.update.grad_norm,
                               "skipped_step": self.update.skipped, **self.values}
        if self.tokens is not None:
            row["tokens_per_s"] = self.tokens / step_time_s
        row["step_time_s"] = step_time_s
        return row


class Algorithm:
    """One training algorithm: the hooks below, run by `setup` and `train`."""

    unit: ClassVar[str] = "training items"
    """What `prepare` returns, for the start banner (e.g. "preference pairs")."""

    def __init__(self, cfg: RecipeConfig, backend: TrainingBackend, runtime: Runtime) -> None:
        self.cfg = cfg
        self.algo = cfg.algorithm_config
        self.backend = backend
        self.runtime = runtime
        self.session = TrainingSession(cfg, backend, runtime)
        self.limits: Limits = limits(cfg.policy, cfg.data)
        """Sequence-length limits of the rendered examples and prompts."""
        self.train_items: Sequence[Any] = ()
        self.start_step = 0
        self.step = 0
        """The last step trained (set by `begin_training`, advanced by `advance`)."""

    # ---- hooks ----------------------------------------------------------------------------

    def prepare(self) -> Sequence[Any]:
        """Load the data and build what the steps need (the tokenizer and renderer are set);
        return the training items the data order indexes."""
        raise NotImplementedError

    def items_per_step(self) -> int:
        """How many training items one step draws."""
        return self.cfg.policy.train_global_batch_size

    def collect(self, step: int, indices: list[int]) -> Any:
        """The step's batch, before the step's seed is set; by default the items drawn."""
        return [self.train_items[i] for i in indices]

    def train_step(self, batch: Any) -> StepMetrics:
        """Forward/backward and the optimizer update(s) of one step, on every rank."""
        raise NotImplementedError

    def has_validation(self) -> bool:
        """Whether there is held-out data to validate on."""
        return False

    def validate(self) -> dict[str, float]:
        """Held-out metrics, by their metrics.jsonl key."""
        return {}

    def samples(self, split: Split) -> list[Sample]:
        """The recipe's `split` samples (data/ sees the data section and the algorithm name)."""
        return load_samples(self.cfg.data, self.cfg.algorithm, split)

    # ---- the loop -------------------------------------------------------------------------

    def setup(self) -> None:
        policy, data = self.cfg.policy, self.cfg.data
        self.tokenizer = load_tokenizer(policy, data)
        self.renderer = renderer(policy, data, self.cfg.algorithm, self.tokenizer)
        self.session.tokenizer_state = tokenizer_state(policy, data, self.renderer)
        self.train_items = self.prepare()
        self.order = DataOrder(len(self.train_items), self.algo.seed, self.cfg.data.shuffle)
        self.start_step = self.session.resume(self.order)
        self.session.banner(f"{len(self.train_items)} {self.unit}")

    def train(self) -> None:
        self.begin_training()
        while self.advance():
            pass
        self.end_training()

    def begin_training(self) -> None:
        """Progress display and the validation at step 0, before the first `advance`."""
        session = self.session
        self.step = self.start_step
        session.start_progress(self.start_step, self.algo.max_num_steps)
        if self.algo.val_at_start and self.start_step == 0 and self.has_validation():
            session.log(0, self.validate())

    def advance(self) -> bool:
        """One training step; False when the run is over (its last step, its last epoch, or a
        stop request). A multi-adapter run (`algorithms.joint`) calls this in turns."""
        algo, session = self.algo, self.session
        if self.step >= algo.max_num_steps:
            return False
        indices, epoch = self.order.next_batch(self.items_per_step())
        if epoch >= algo.max_num_epochs:
            return False
        self.step += 1
        step = self.step
        started = time.perf_counter()
        batch = self.collect(step, indices)
        seed_step(algo.seed, step, self.runtime.rank)
        result = self.train_step(batch)
        metrics = result.record(time.perf_counter() - started)
        session.check_finite(step, result.loss, result.update.skipped)
        if algo.val_period and step % algo.val_period == 0 and self.has_validation():
            metrics.update(self.validate())
        session.log(step, metrics)
        session.maybe_save(step)
        return not session.stop_requested(step)

    def end_training(self) -> None:
        """The final checkpoint, when this run trained any step."""
        self.session.maybe_save(self.step, final=self.step > self.start_step)

    def cleanup(self) -> None:
        self.session.close()

    # ---- for the hooks --------------------------------------------------------------------

    def rank_share(self, items: Sequence[Any]) -> list[Any]:
        """This data-parallel rank's share of held-out `items`; all of them on every rank when
        there are fewer items than ranks (each rank then counts them all)."""
        if len(items) < self.backend.dp_size:
            return list(items)
        return rank_slice(list(items), self.backend.dp_rank, self.backend.dp_size)


def val_limit(available: int, val_batches: int | None, val_global_batch_size: int) -> int:
    """How many held-out items one validation reads: `val_batches` batches of
    `val_global_batch_size`, or all `available` when `val_batches` is null."""
    return available if val_batches is None else val_batches * val_global_batch_size
