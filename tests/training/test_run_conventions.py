"""`run --dry-run`, a finished run run again, and `--fresh`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.conftest import QUIET, Runner

TWO_STEPS = ["sft.max_num_steps=2", "sft.val_at_start=false", "sft.val_period=0", *QUIET]


@pytest.mark.slow  # five runs of the CLI
def test_dry_run_finished_and_fresh(runner: Runner) -> None:
    dry = runner.run("run", "sft-tiny-dtensor-lora", "--dry-run", *TWO_STEPS)
    assert "start at step 0 (no earlier checkpoints)" in dry.stdout
    assert not (runner.workdir / "logs").exists()  # nothing ran

    first = runner.run("run", "sft-tiny-dtensor-lora", *TWO_STEPS)
    assert "finished sft at step 2" in first.stdout
    assert "  lora-rl generate " in first.stdout and "--set sft.max_num_steps=2" in first.stdout

    again = runner.run("run", "sft-tiny-dtensor-lora", *TWO_STEPS)
    assert "already finished: step 2 of 2 is checkpointed in results/sft-tiny-dtensor-lora" \
        in again.stdout
    assert "sft step" not in again.stdout

    dry = runner.run("run", "sft-tiny-dtensor-lora", "--dry-run", *TWO_STEPS)
    assert "resume from the latest good checkpoint in results/sft-tiny-dtensor-lora " \
           "(newest: step_2)" in dry.stdout

    fresh = runner.run("run", "sft-tiny-dtensor-lora", "--fresh", *TWO_STEPS)
    assert "--fresh: earlier checkpoints moved to results/sft-tiny-dtensor-lora.before-fresh-" \
        in fresh.stdout
    assert "finished sft at step 2" in fresh.stdout
    kept = [p.name for p in Path(runner.workdir / "results").iterdir()]
    assert len(kept) == 2 and any(".before-fresh-" in k for k in kept)
