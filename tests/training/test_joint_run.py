"""Multi-adapter runs (`lora-rl run A.yaml B.yaml`): an SFT and a DPO adapter, of different
ranks, learning rates, seeds and lengths, trained in turns on one loaded tiny base. Each
adapter's per-step metrics equal its solo run's; each resumes from its own checkpoints; one
adapter failing or finishing early does not stop the other."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import yaml

from lora_rl.training.preemption import EXIT_PREEMPTED
from tests.training.conftest import QUIET, Runner

TIMING = {"step_time_s", "tokens_per_s"}


def _write(runner, source: str, name: str, changes: dict) -> str:
    tree = yaml.safe_load((runner.workdir / "recipes" / source).read_text())
    for dotted, value in changes.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (runner.workdir / name).write_text(yaml.safe_dump(tree, sort_keys=False))
    return name


def _recipes(runner, sft_changes: dict | None = None,
             dpo_changes: dict | None = None) -> tuple[str, str]:
    sft = _write(runner, "sft-tiny-dtensor-lora.yaml", "sft.yaml", {
        "sft.max_num_steps": 6, "sft.val_period": 3, "sft.val_batches": 1,
        "checkpointing.save_period": 2, "checkpointing.keep_top_k": None,
        "checkpointing.checkpoint_dir": "ck/sft", "logger.log_dir": "logs/sft",
        **(sft_changes or {})})
    dpo = _write(runner, "dpo-tiny-dtensor-lora.yaml", "dpo.yaml", {
        "dpo.max_num_steps": 4, "dpo.val_period": 2, "dpo.val_batches": 1, "dpo.seed": 7,
        "policy.optimizer.kwargs.lr": 3.0e-3, "policy.dtensor_cfg.lora_cfg.dim": 4,
        "policy.dtensor_cfg.lora_cfg.alpha": 8, "checkpointing.save_period": 2,
        "checkpointing.keep_top_k": None, "checkpointing.checkpoint_dir": "ck/dpo",
        "logger.log_dir": "logs/dpo", **(dpo_changes or {})})
    return sft, dpo


def _rows(runner, log_dir: str) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for row in runner.metrics(log_dir):
        rows.setdefault(row["step"], {}).update(
            {k: v for k, v in row.items() if k not in TIMING and k != "step"})
    return rows


def _solo(runner, recipe: str, name: str) -> dict[int, dict]:
    runner.run("run", recipe, f"logger.log_dir=logs/solo-{name}",
               f"checkpointing.checkpoint_dir=ck/solo-{name}", *QUIET)
    return _rows(runner, f"logs/solo-{name}")


def _assert_same(joint: dict[int, dict], solo: dict[int, dict]) -> None:
    assert sorted(joint) == sorted(solo)
    for step, row in solo.items():
        assert set(joint[step]) == set(row), step
        for key, value in row.items():
            if isinstance(value, float):
                assert joint[step][key] == pytest.approx(value, abs=1e-5, rel=0), (step, key)
            else:
                assert joint[step][key] == value, (step, key)


@pytest.fixture(scope="module")
def solo(tmp_path_factory, model_cache):
    """Each recipe of `_recipes` run alone (once for this module)."""
    runner = Runner(tmp_path_factory.mktemp("solo"), model_cache)
    sft, dpo = _recipes(runner)
    return {"sft": _solo(runner, sft, "sft"), "dpo": _solo(runner, dpo, "dpo")}


@pytest.mark.slow  # ~15 s, plus ~17 s for the solo runs it compares with
def test_each_adapter_of_a_joint_run_matches_its_solo_run_and_resumes_exactly(runner, solo,
                                                                             monkeypatch):
    sft, dpo = _recipes(runner)
    done = runner.run("run", sft, dpo, *QUIET)
    assert "[sft] finished sft at step 6" in done.stdout
    assert "[dpo] finished dpo at step 4" in done.stdout  # ended first; sft went on
    assert sorted(solo["sft"]) == list(range(7)) and sorted(solo["dpo"]) == list(range(5))
    _assert_same(_rows(runner, "logs/sft"), solo["sft"])
    _assert_same(_rows(runner, "logs/dpo"), solo["dpo"])
    # Each adapter checkpoints on its own schedule, into its own directory.
    ck = runner.workdir / "ck"
    assert sorted(p.name for p in (ck / "sft").glob("step_*")) == ["step_2", "step_4", "step_6"]
    assert sorted(p.name for p in (ck / "dpo").glob("step_*")) == ["step_2", "step_4"]
    monkeypatch.setenv("LORA_RL_CACHE", runner.env["LORA_RL_CACHE"])
    _exports_its_own_adapter(runner, {"sft": 8, "dpo": 4})
    # Take each adapter back to a different mid-run checkpoint: the next run resumes both.
    _drop(ck / "sft" / "step_6", ck / "sft" / "step_4", ck / "dpo" / "step_4")
    again = runner.run("run", sft, dpo, *QUIET)
    assert "[sft] resuming from ck/sft/step_2 (step 2)" in again.stdout
    assert "[dpo] resuming from ck/dpo/step_2 (step 2)" in again.stdout
    _assert_same(_rows(runner, "logs/sft"), solo["sft"])
    _assert_same(_rows(runner, "logs/dpo"), solo["dpo"])


def _exports_its_own_adapter(runner, ranks: dict[str, int]) -> None:
    import json

    from lora_rl.interop.export import export_checkpoint

    for name, rank in ranks.items():
        out = export_checkpoint(runner.workdir / "ck" / name, "peft",
                                runner.workdir / f"export-{name}", None, False)
        assert json.loads((out / "adapter_config.json").read_text())["r"] == rank


def _drop(*dirs: Path) -> None:
    import shutil

    for directory in dirs:
        shutil.rmtree(directory)


@pytest.mark.slow  # ~8 s, plus the solo runs when run alone
def test_a_failing_adapter_stops_alone(runner, solo):
    sft, dpo = _recipes(runner, {"policy.optimizer.kwargs.lr": 1e30,
                                 "policy.max_grad_norm": None})
    done = runner.run("run", sft, dpo, *QUIET, check=False)
    assert done.returncode == 1
    assert "[sft] error: step 2: loss is nan" in done.stderr or \
        "[sft] error: step 2: gradients are not finite" in done.stderr, done.stderr
    assert "failed adapters: sft" in done.stderr
    assert "Traceback" not in done.stderr
    _assert_same(_rows(runner, "logs/dpo"), solo["dpo"])


def _wait_for_rows(runner, log_dir: str, rows: int, proc, timeout: float = 240) -> None:
    path = runner.workdir / log_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= rows:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"{log_dir} did not reach {rows} rows")


@pytest.mark.slow
def test_sigterm_and_sigkill_then_resume_match_the_solo_runs_for_every_adapter(runner):
    sft, dpo = _recipes(runner, {"sft.max_num_steps": 30, "sft.val_period": 0,
                                 "checkpointing.save_period": 3},
                        {"dpo.max_num_steps": 24, "dpo.val_period": 0,
                         "checkpointing.save_period": 4})
    reference = {"sft": _solo(runner, sft, "sft"), "dpo": _solo(runner, dpo, "dpo")}
    # SIGTERM: every adapter checkpoints its last completed step and the job exits 75.
    proc = runner.popen("run", sft, dpo, *QUIET)
    _wait_for_rows(runner, "logs/dpo", 5, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err
    for name in ("sft", "dpo"):
        assert f"[{name}] stopped by SIGTERM after step" in out, out
    # SIGKILL mid-run: nothing is written on the way out; each resumes its last checkpoint.
    proc = runner.popen("run", sft, dpo, *QUIET)
    _wait_for_rows(runner, "logs/dpo", 12, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = runner.run("run", sft, dpo, *QUIET)
    assert "[sft] resuming from" in again.stdout and "[dpo] resuming from" in again.stdout
    _assert_same(_rows(runner, "logs/sft"), reference["sft"])
    _assert_same(_rows(runner, "logs/dpo"), reference["dpo"])
