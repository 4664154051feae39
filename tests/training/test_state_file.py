"""state.json is read into a typed model whose schema_version is checked: a checkpoint from a
newer lora-rl stops resume and export with one line; a wrong-typed field is a CheckpointError
(resume skips it for the previous checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lora_rl.checkpoint import (
    CheckpointError,
    CheckpointVersionError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from lora_rl.state_file import STATE_SCHEMA_VERSION, CheckpointState, read_state

GOOD = {
    "schema_version": STATE_SCHEMA_VERSION,
    "run": {"algorithm": "sft", "backend": "dtensor", "model_name": "m", "lora": {"dim": 8}},
    "recipe": {"fixed": {"algorithm": "sft"}, "adjustable": {"policy.max_grad_norm": 1.0}},
    "algorithm": {"data": {"epoch": 1, "offset": 12}},
    "optimizer_meta": {"optimizer": {"param_groups": [{"lr": 0.1}]}, "scheduler": {"x": 1}},
    "metrics": {"loss": 0.5},
    "lora_rl_version": "0.1.0",
}


def _write(root: Path, step: int, state: dict) -> Path:
    return save_checkpoint(root, step, {"adapter": {"w": torch.ones(2)}}, state)


def test_state_round_trips_through_the_model(tmp_path):
    state = read_state(load_checkpoint(_write(tmp_path, 1, GOOD)))
    assert state.algorithm.data is not None
    assert (state.algorithm.data.epoch, state.algorithm.data.offset) == (1, 12)
    assert state.run.backend == "dtensor" and state.run.lora == {"dim": 8}
    assert state.to_json() == {**GOOD, "metrics": {"loss": 0.5}}
    assert CheckpointState.model_validate(state.to_json()) == state


def test_a_state_without_schema_version_is_version_1(tmp_path):
    old = {k: v for k, v in GOOD.items() if k != "schema_version"}
    assert read_state(load_checkpoint(_write(tmp_path, 1, old))).schema_version == 1


def test_a_future_schema_version_is_refused_by_name(tmp_path):
    path = _write(tmp_path, 1, {**GOOD, "schema_version": STATE_SCHEMA_VERSION + 1,
                                "lora_rl_version": "9.0"})
    with pytest.raises(CheckpointVersionError) as info:
        read_state(load_checkpoint(path))
    message = str(info.value)
    assert f"schema_version {STATE_SCHEMA_VERSION + 1}" in message
    assert "lora-rl 9.0" in message and "\n" not in message


def test_a_future_checkpoint_is_not_skipped_for_an_older_one(tmp_path):
    _write(tmp_path, 1, GOOD)
    _write(tmp_path, 2, {**GOOD, "schema_version": STATE_SCHEMA_VERSION + 1})
    warned: list[str] = []
    with pytest.raises(CheckpointVersionError):
        latest_checkpoint(tmp_path, warn=warned.append, check=read_state)
    assert warned == []


def test_a_future_manifest_version_is_refused(tmp_path):
    path = _write(tmp_path, 1, GOOD)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointVersionError, match="schema_version 99"):
        load_checkpoint(path)


@pytest.mark.parametrize(("field", "value", "says"), [
    ("algorithm", {"data": {"epoch": "1", "offset": 0}}, "algorithm.data.epoch"),
    ("algorithm", {"data": {"epoch": True, "offset": 0}}, "algorithm.data.epoch"),
    ("algorithm", {"data": {"epoch": 0, "offset": -1}}, "algorithm.data.offset"),
    ("optimizer_meta", {"optimizer": [], "scheduler": {}}, "optimizer_meta.optimizer"),
    ("run", ["sft"], "run"),
    ("metrics", {"loss": "low"}, "metrics.loss"),
    ("schema_version", "1", "schema_version"),
])
def test_a_wrong_typed_field_is_one_line_naming_it(tmp_path, field, value, says):
    path = _write(tmp_path, 1, {**GOOD, field: value})
    with pytest.raises(CheckpointError) as info:
        read_state(load_checkpoint(path))
    assert not isinstance(info.value, CheckpointVersionError)
    message = str(info.value)
    assert f"state.json: {says}" in message and "\n" not in message


def test_a_wrong_typed_checkpoint_is_skipped_for_the_previous(tmp_path):
    _write(tmp_path, 1, GOOD)
    _write(tmp_path, 2, {**GOOD, "algorithm": {"data": {"epoch": "x", "offset": 0}}})
    warned: list[str] = []
    found = latest_checkpoint(tmp_path, warn=warned.append, check=read_state)
    assert found is not None and found.step == 1
    assert len(warned) == 1 and "step_2/state.json: algorithm.data.epoch" in warned[0]
