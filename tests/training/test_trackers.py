"""Experiment trackers: what a run logged, read back with each library's own reader, equals
metrics.jsonl; the console prints one plain line per step off a terminal."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from tests.training.conftest import Runner

STEPS = 4
TRACKED = ["logger.tensorboard_enabled=true", "logger.wandb_enabled=true",
           "logger.mlflow_enabled=true", "logger.wandb.mode=offline",
           "logger.wandb.project=lora-rl-test", "logger.mlflow.experiment_name=tiny"]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, model_cache) -> tuple[Runner, str]:
    runner = Runner(tmp_path_factory.mktemp("tracked"), model_cache)
    runner.env["WANDB_SILENT"] = "true"
    done = runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml", f"sft.max_num_steps={STEPS}",
                      "sft.val_period=2", "checkpointing.save_period=2", *TRACKED)
    return runner, done.stdout


def _expected(runner: Runner, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in runner.metrics("logs/sft-tiny-dtensor-lora") if key in r}


def test_tensorboard_events_namespaced(tracked_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runner, _ = tracked_run
    events = EventAccumulator(str(runner.workdir / "logs/sft-tiny-dtensor-lora/tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "val/loss", "val/accuracy"} <= set(events.Tags()["scalars"])
    for tag, key in (("train/loss", "loss"), ("val/loss", "val_loss")):
        got = {e.step: e.value for e in events.Scalars(tag)}
        assert got == pytest.approx(_expected(runner, key), rel=1e-6)


def test_mlflow_file_store(tracked_run, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as the run itself sets it

    runner, _ = tracked_run
    log_dir = runner.workdir / "logs/sft-tiny-dtensor-lora"
    client = MlflowClient((log_dir / "mlruns").as_uri())
    run_id = (log_dir / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "FINISHED"
    history = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    assert history == pytest.approx(_expected(runner, "loss"), rel=1e-6)
    accuracy = {m.step: m.value for m in client.get_metric_history(run_id, "val/accuracy")}
    assert accuracy == pytest.approx(_expected(runner, "val_accuracy"))


def _wandb_records(path: Path):
    """The records of a W&B offline run file: W&B's own protobuf messages in its transaction
    log (a 7-byte ':W&B' header, then LevelDB-log framing: 32 KiB blocks of
    crc32 | length | type chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a header: padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_run(tracked_run) -> None:
    import json

    runner, _ = tracked_run
    files = list((runner.workdir / "logs/sft-tiny-dtensor-lora/wandb").glob(
        "offline-run-*/run-*.wandb"))
    assert len(files) == 1
    loss: dict[int, float] = {}
    config_keys: set[str] = set()
    for record in _wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            # A key with '/' is stored split, as nested_key parts.
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                     for item in record.history.item}
            if "train/loss" in items:
                loss[int(items["_step"])] = items["train/loss"]
        elif kind in ("run", "config"):
            update = record.run.config.update if kind == "run" else record.config.update
            config_keys |= {item.key for item in update}
    assert loss == pytest.approx(_expected(runner, "loss"), rel=1e-6)
    assert {"sft", "policy", "logger"} <= config_keys


LINE = re.compile(r"^sft step (\d+)/4 \| (loss [\d.]+ \| )?.*\| eta \d+:\d\d:\d\d$")


def test_plain_lines_off_a_terminal(tracked_run) -> None:
    _, stdout = tracked_run
    lines = [line for line in stdout.splitlines() if line.startswith("sft step")]
    assert [int(LINE.match(line).group(1)) for line in lines[1:]] == [1, 2, 3, 4]
    assert lines[0] == next(line for line in lines if line.startswith("sft step 0/4"))
    assert "Loading weights" not in stdout
    assert "{'" not in stdout  # no Python reprs
    assert stdout.splitlines()[0].startswith("lora-rl sft | model lora-rl/tiny-llama | dtensor")
    assert "finished sft at step 4" in stdout
    assert "  lora-rl export --checkpoint results/sft-tiny-dtensor-lora --format peft" in stdout


def test_missing_tracker_stops_before_the_model_loads(runner: Runner) -> None:
    """`run` refuses (LR960 as an error); a torchrun rank that skipped validation fails in
    require_trackers before the model loads."""
    runner.env["PYTHONPATH"] = f"{_blocker(runner.workdir)}:{runner.env.get('PYTHONPATH', '')}"
    done = runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml", "logger.wandb_enabled=true",
                      check=False)
    assert done.returncode == 1
    # What this machine lacks is an error at `run` (a warning at `validate`), before any load.
    assert "error LR960: logger.wandb_enabled is true but the wandb package is not installed" \
        in done.stderr
    assert "Traceback" not in done.stderr
    assert not (runner.workdir / "logs/sft-tiny-dtensor-lora/metrics.jsonl").exists()


def _blocker(workdir: Path) -> Path:
    """A sitecustomize that hides the wandb package, as on a machine without it."""
    site = workdir / "no-wandb"
    site.mkdir()
    # importlib.util.find_spec answers None for a module set to None, and import fails.
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None\n")
    return site
