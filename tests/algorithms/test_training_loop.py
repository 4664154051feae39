"""The contract between `Algorithm`'s loop and its hooks: what `setup` and `train` call, in what
order and with which arguments, with a recording algorithm and a recording session."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lora_rl.algorithms import base
from lora_rl.algorithms.base import Algorithm, StepMetrics, val_limit
from lora_rl.backends.base import StepStats
from lora_rl.config.validate import load_config
from lora_rl.data.order import DataOrder
from lora_rl.training.runtime import Runtime, seed_step

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft-tiny-dtensor-lora.yaml"
ITEMS = list("abcdefgh")


class RecordingSession:
    """Stands in for TrainingSession: records every call; `stop_at` fakes a stop signal."""

    def __init__(self, calls: list, resume_at: int = 0, stop_at: int | None = None) -> None:
        self.calls, self.resume_at, self.stop_at = calls, resume_at, stop_at
        self.tokenizer_state = None

    def resume(self, order: DataOrder) -> int:
        self.calls.append(("resume", order.size))
        return self.resume_at

    def banner(self, summary: str) -> None:
        self.calls.append(("banner", summary))

    def start_progress(self, first: int, total: int) -> None:
        self.calls.append(("start_progress", first, total))

    def check_finite(self, step: int, loss: float, skipped: bool) -> None:
        self.calls.append(("check_finite", step, loss, skipped))

    def log(self, step: int, metrics: dict) -> None:
        self.calls.append(("log", step, dict(metrics)))

    def maybe_save(self, step: int, final: bool = False) -> None:
        self.calls.append(("maybe_save", step, final))

    def stop_requested(self, step: int) -> bool:
        self.calls.append(("stop_requested", step))
        return step == self.stop_at


class Recording(Algorithm):
    """Two items a step; the loss of step k is k, the step's metrics name the batch."""

    unit = "letters"

    def __init__(self, cfg, calls: list, validation: bool = True) -> None:
        super().__init__(cfg, SimpleNamespace(dp_rank=0, dp_size=1),
                         Runtime(0, 1, 0, torch.device("cpu")))
        self.calls, self.validation = calls, validation

    def prepare(self) -> list[str]:
        self.calls.append(("prepare", self.tokenizer, self.renderer))
        return ITEMS

    def items_per_step(self) -> int:
        return 2

    def collect(self, step: int, indices: list[int]) -> tuple[int, list[str]]:
        self.calls.append(("collect", step, indices, torch.initial_seed()))
        return step, super().collect(step, indices)

    def train_step(self, batch: tuple[int, list[str]]) -> StepMetrics:
        step, letters = batch
        self.calls.append(("train_step", letters, torch.initial_seed()))
        return StepMetrics(float(step), StepStats(grad_norm=0.5, lr=1e-3, skipped=False),
                           {"batch": "".join(letters)}, tokens=8)

    def has_validation(self) -> bool:
        return self.validation

    def validate(self) -> dict[str, float]:
        self.calls.append(("validate",))
        return {"val_loss": 0.25}


def _algorithm(overrides: list[str], calls: list, resume_at: int = 0,
               stop_at: int | None = None, validation: bool = True) -> Recording:
    cfg = load_config(RECIPE, ["sft.seed=7", "data.shuffle=false", *overrides])
    algorithm = Recording(cfg, calls, validation)
    algorithm.session = RecordingSession(calls, resume_at, stop_at)
    return algorithm


@pytest.fixture
def no_tokenizer(monkeypatch):
    monkeypatch.setattr(base, "load_tokenizer", lambda policy, data: "TOKENIZER")
    monkeypatch.setattr(base, "renderer",
                        lambda policy, data, algorithm, tokenizer: f"RENDERER({tokenizer})")
    monkeypatch.setattr(base, "tokenizer_state",
                        lambda policy, data, renderer: {"from": renderer})


def _seed(step: int) -> int:
    return seed_step(7, step, 0).initial_seed() - 1


def test_setup_prepares_after_the_tokenizer_then_resumes_over_the_prepared_items(no_tokenizer):
    calls: list = []
    algorithm = _algorithm([], calls, resume_at=3)
    algorithm.setup()
    assert calls == [("prepare", "TOKENIZER", "RENDERER(TOKENIZER)"), ("resume", len(ITEMS)),
                     ("banner", f"{len(ITEMS)} letters")]
    assert algorithm.session.tokenizer_state == {"from": "RENDERER(TOKENIZER)"}
    assert algorithm.train_items == ITEMS and algorithm.start_step == 3


def test_each_step_collects_seeds_trains_checks_validates_logs_saves_then_checks_for_stop(
        no_tokenizer):
    calls: list = []
    algorithm = _algorithm(["sft.max_num_steps=2", "sft.val_at_start=true", "sft.val_period=2"],
                           calls)
    algorithm.setup()
    del calls[:]
    algorithm.train()
    logs = [c for c in calls if c[0] == "log"]
    assert [c[:2] for c in calls] == [
        ("start_progress", 0), ("validate",), ("log", 0),
        ("collect", 1), ("train_step", ["a", "b"]), ("check_finite", 1), ("log", 1),
        ("maybe_save", 1), ("stop_requested", 1),
        ("collect", 2), ("train_step", ["c", "d"]), ("check_finite", 2), ("validate",),
        ("log", 2), ("maybe_save", 2), ("stop_requested", 2),
        ("maybe_save", 2)]
    assert calls[0] == ("start_progress", 0, 2)
    assert logs[0] == ("log", 0, {"val_loss": 0.25})
    assert ("collect", 2, [2, 3]) == calls[9][:3]
    assert ("check_finite", 2, 2.0, False) in calls
    assert calls[-1] == ("maybe_save", 2, True)
    # The step's seed is set after `collect` (GRPO samples under its own seed there) and before
    # `train_step` (dropout): a pure function of (seed, step, rank).
    collects = [c for c in calls if c[0] == "collect"]
    trains = [c for c in calls if c[0] == "train_step"]
    assert [c[2] for c in trains] == [_seed(1), _seed(2)]
    assert collects[1][3] == _seed(1) != _seed(2)
    step1 = logs[1][2]
    assert {k: step1[k] for k in ("loss", "lr", "grad_norm", "skipped_step", "batch")} == \
        {"loss": 1.0, "lr": 1e-3, "grad_norm": 0.5, "skipped_step": False, "batch": "ab"}
    assert step1["step_time_s"] > 0
    assert step1["tokens_per_s"] == pytest.approx(8 / step1["step_time_s"])
    assert "val_loss" not in step1 and logs[2][2]["val_loss"] == 0.25


def test_without_held_out_data_validate_is_never_called(no_tokenizer):
    calls: list = []
    algorithm = _algorithm(["sft.max_num_steps=2", "sft.val_at_start=true", "sft.val_period=1"],
                           calls, validation=False)
    algorithm.setup()
    algorithm.train()
    assert ("validate",) not in calls
    assert [c[1] for c in calls if c[0] == "log"] == [1, 2]


def test_a_resumed_run_skips_start_validation_and_continues_the_data_order(no_tokenizer):
    calls: list = []
    algorithm = _algorithm(["sft.max_num_steps=3", "sft.val_at_start=true", "sft.val_period=0"],
                           calls, resume_at=2)
    algorithm.setup()
    for _ in range(2):  # what the restore did
        algorithm.order.next_batch(2)
    del calls[:]
    algorithm.train()
    assert [c[:3] for c in calls if c[0] == "collect"] == [("collect", 3, [4, 5])]
    assert [c[1] for c in calls if c[0] == "log"] == [3]
    assert calls[0] == ("start_progress", 2, 3)
    assert calls[-1] == ("maybe_save", 3, True)


def test_a_stop_request_ends_the_loop_after_that_step(no_tokenizer):
    calls: list = []
    algorithm = _algorithm(["sft.max_num_steps=5", "sft.val_period=0"], calls, stop_at=2)
    algorithm.setup()
    algorithm.train()
    assert [c[1] for c in calls if c[0] == "train_step"] == [["a", "b"], ["c", "d"]]
    assert calls[-2:] == [("stop_requested", 2), ("maybe_save", 2, True)]


def test_the_epoch_limit_ends_the_loop_before_collecting(no_tokenizer):
    calls: list = []
    algorithm = _algorithm(["sft.max_num_steps=100", "sft.max_num_epochs=1",
                            "sft.val_period=0"], calls)
    algorithm.setup()
    algorithm.train()
    assert [c[2] for c in calls if c[0] == "collect"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert calls[-1] == ("maybe_save", 4, True)


def test_a_run_resumed_at_its_last_step_trains_nothing_and_saves_nothing_new(no_tokenizer):
    calls: list = []
    algorithm = _algorithm(["sft.max_num_steps=2"], calls, resume_at=2)
    algorithm.setup()
    del calls[:]
    algorithm.train()
    assert calls == [("start_progress", 2, 2), ("maybe_save", 2, False)]


def test_validation_reads_val_batches_or_everything_and_splits_over_ranks():
    assert val_limit(20, None, 8) == 20
    assert val_limit(20, 2, 8) == 16
    cfg = load_config(RECIPE)
    algorithm = Algorithm(cfg, SimpleNamespace(dp_rank=1, dp_size=2),
                          Runtime(1, 2, 1, torch.device("cpu")))
    assert algorithm.rank_share(list("abcde")) == ["c", "d"]
    assert algorithm.rank_share(["a"]) == ["a"]  # fewer than ranks: every rank reads it all
