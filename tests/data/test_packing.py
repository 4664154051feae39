"""Sequence packing: bins respect the row length, positions restart per example, attention stays
inside each example, and packed losses equal unpacked ones within 1e-5."""

from __future__ import annotations

import random

import pytest
import torch

from lora_rl.data.examples import Example
from lora_rl.data.packing import (
    collate_packed,
    first_fit_decreasing,
    packed_micro_batches,
    packed_model_inputs,
)
from lora_rl.data.sources import collate
from tests.training.conftest import QUIET


def _examples(lengths: list[int], seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [1] + [rng.randrange(4, 20) for _ in range(n - 1)]
        prompt = max(1, n // 2)
        out.append(Example(tuple(ids), tuple([0] * prompt + [1] * (n - prompt))))
    return out


def test_first_fit_decreasing_keeps_every_example_within_capacity():
    examples = _examples([30, 3, 12, 17, 5, 5, 29, 2, 8])
    bins = first_fit_decreasing(examples, 32)
    assert sorted(id(e) for b in bins for e in b) == sorted(id(e) for e in examples)
    assert all(sum(len(e.input_ids) for e in b) <= 32 for b in bins)
    assert len(bins) == 4  # 111 tokens: the lower bound


def test_positions_restart_and_attention_stays_inside_each_example():
    batch = collate_packed([_examples([3, 2]), _examples([4])], pad_id=0)
    mask, positions = packed_model_inputs(batch.segment_ids)
    assert positions.tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    row = mask[0, 0].int().tolist()
    assert row[3] == [0, 0, 0, 1, 0] and row[4] == [0, 0, 0, 1, 1] and row[2] == [1, 1, 1, 0, 0]
    assert batch.loss_mask[0, 3] == 0  # an example's first token is never a target


def test_packed_logprobs_equal_unpacked(model_cache):
    from transformers import AutoModelForCausalLM

    from lora_rl.backends.token_logprobs import batch_token_logprobs

    model = AutoModelForCausalLM.from_pretrained(model_cache / "tiny-llama-v1").eval()
    examples = _examples([5, 31, 9, 14, 7, 22, 3, 12], seed=1)

    def nll(batch) -> torch.Tensor:
        return -(batch_token_logprobs(model, batch) * batch.target_mask).sum()

    with torch.no_grad():
        plain = sum(float(nll(collate([e], 0))) for e in examples)
        micro = packed_micro_batches(examples, 32, 64, pad_id=0)
        packed = sum(float(nll(b)) for b in micro)
    assert len(micro) == 2 and sum(int(b.segment_ids.max(1).values.sum()) for b in micro) == 8
    assert packed == pytest.approx(plain, abs=1e-5)


@pytest.mark.slow
def test_packed_training_losses_equal_unpacked(runner):
    losses = {}
    for packed in ("false", "true"):
        runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml", "sft.max_num_steps=5",
                   "sft.val_period=0", "sft.val_at_start=false", "checkpointing.enabled=false",
                   "policy.optimizer.kwargs.lr=5e-4", f"logger.log_dir=logs/{packed}",
                   f"policy.sequence_packing.enabled={packed}", *QUIET)
        losses[packed] = [r["loss"] for r in runner.metrics(f"logs/{packed}")]
    assert len(losses["true"]) == 5
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-5)


def test_the_packing_benchmark_runs_quick_in_python_m_benchmarks(tmp_path, monkeypatch, capsys):
    """`python -m benchmarks --quick --only packing`: registered, seconds at the quick shape,
    and packing computes fewer token cells for the same real tokens than padding does."""
    import json
    import sys

    import benchmarks.common
    import benchmarks.packing
    from benchmarks.__main__ import BENCHMARKS, main

    assert "packing" in BENCHMARKS
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    monkeypatch.setattr(benchmarks.packing, "THREADS", 1)
    monkeypatch.setattr(sys, "argv", ["benchmarks", "--quick", "--only", "packing"])
    threads = torch.get_num_threads()
    try:
        main()
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "summary-quick.json").read_text())["results"]["packing"]
    assert "error" not in result
    cells, shape = result["token_cells"], result["shape"]
    assert shape["real_tokens"] <= cells["packed"] < cells["padded"]
    assert result["micro_batches"]["packed"] < result["micro_batches"]["padded"]
    assert result["speedup"] > 1.0
    assert "packing: packed / padded tokens/s" in capsys.readouterr().out
