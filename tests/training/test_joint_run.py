"""Multi-adapter runs (`lora-rl run A.yaml B.yaml`): SFT, DPO and GRPO adapters, of different
ranks, learning rates, seeds and lengths, trained in turns on one loaded tiny base. Each
adapter's per-step metrics (and a GRPO adapter's sampled responses) equal its solo run's; each
resumes from its own checkpoints; one adapter failing or finishing early does not stop the
other."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from lora_rl.training.preemption import EXIT_PREEMPTED
from tests.training.conftest import QUIET, Runner


def _timing(key: str) -> bool:
    """Wall-clock metrics (step, generation, weight sync, training times; tokens/s)."""
    return key.endswith("_time_s") or key == "tokens_per_s"


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


REWARD = '''"""A reward that varies over random responses (distinct characters per character),
so the tiny untrained adapters get non-zero advantages; each call's responses go to `log`."""
import json


def varied(prompts, responses, answers, log):
    with open(log, "a") as out:
        out.write(json.dumps(responses) + "\\n")
    return [len(set(r)) / (1 + len(r)) for r in responses]
'''


def _grpo(runner, name: str, changes: dict) -> str:
    """A small GRPO recipe from the untrained adapter, its reward `joint_reward:varied` logging
    the sampled responses to `responses-NAME.jsonl` (an override moves it for the solo run)."""
    (runner.workdir / "joint_reward.py").write_text(REWARD)
    runner.env["PYTHONPATH"] = os.pathsep.join(
        [str(runner.workdir), *filter(None, [runner.env.get("PYTHONPATH")])])
    return _write(runner, "grpo-tiny-dtensor-lora.yaml", f"{name}.yaml", {
        "grpo.num_prompts_per_step": 4, "grpo.num_generations_per_prompt": 4,
        "grpo.max_num_steps": 4, "grpo.val_period": 2, "grpo.max_val_samples": 4,
        "grpo.val_at_start": False, "policy.init_adapter_path": None,
        "policy.train_global_batch_size": 16, "policy.train_micro_batch_size": 8,
        "env.reward": "joint_reward:varied",
        "env.reward_kwargs": {"log": f"responses-{name}.jsonl"},
        "checkpointing.save_period": 2, "checkpointing.keep_top_k": None,
        "checkpointing.checkpoint_dir": f"ck/{name}", "logger.log_dir": f"logs/{name}",
        **changes})


def _responses(runner, name: str) -> list[list[str]]:
    path = runner.workdir / f"responses-{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rows(runner, log_dir: str) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for row in runner.metrics(log_dir):
        rows.setdefault(row["step"], {}).update(
            {k: v for k, v in row.items() if not _timing(k) and k != "step"})
    return rows


def _solo(runner, recipe: str, name: str, *overrides: str) -> dict[int, dict]:
    runner.run("run", recipe, f"logger.log_dir=logs/solo-{name}",
               f"checkpointing.checkpoint_dir=ck/solo-{name}", *overrides, *QUIET)
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
    from lora_rl.interop.export import export_checkpoint

    for name, rank in ranks.items():
        out = export_checkpoint(runner.workdir / "ck" / name, "peft",
                                runner.workdir / f"export-{name}", None, False)
        assert json.loads((out / "adapter_config.json").read_text())["r"] == rank


@pytest.mark.slow  # ~25 s with its solo runs
def test_grpo_adapters_sample_and_train_as_their_solo_runs_and_resume_exactly(runner):
    """Two GRPO adapters (merge- and split-weight sync, different ranks, seeds, group sizes and
    rewards' logs) and an SFT adapter: each GRPO adapter samples on the shared base with its own
    adapter active, under its own seed, so its responses and metrics are its solo run's."""
    merged = _grpo(runner, "gm", {"grpo.seed": 5})
    split = _grpo(runner, "gs", {
        "grpo.seed": 9, "grpo.num_prompts_per_step": 2, "grpo.max_num_steps": 3,
        "grpo.val_period": 0, "policy.train_global_batch_size": 8,
        "policy.train_micro_batch_size": 4, "policy.dtensor_cfg.lora_cfg.dim": 4,
        "policy.dtensor_cfg.lora_cfg.alpha": 8, "policy.generation.lora_weight_sync": "split",
        "policy.generation.max_new_tokens": 3})
    sft, _ = _recipes(runner, {"sft.max_num_steps": 3})
    solo = {name: _solo(runner, recipe, name, f"env.reward_kwargs.log=responses-solo-{name}.jsonl")
            for name, recipe in (("gm", merged), ("gs", split))}
    solo["sft"] = _solo(runner, sft, "sft")
    done = runner.run("run", merged, split, sft, *QUIET)
    assert "[gm] finished grpo at step 4" in done.stdout
    assert "[gs] finished grpo at step 3" in done.stdout
    for name in ("gm", "gs", "sft"):
        _assert_same(_rows(runner, f"logs/{name}"), solo[name])
    for name in ("gm", "gs"):
        assert _responses(runner, name) == _responses(runner, f"solo-{name}")
        assert any(row.get("loss", 0.0) != 0.0 for row in solo[name].values()), name
    # Both back to step 2: the resumed steps sample and train as the solo runs did.
    ck = runner.workdir / "ck"
    _drop(ck / "gm" / "step_4", ck / "gs" / "step_3")
    again = runner.run("run", merged, split, sft, *QUIET)
    assert "[gm] resuming from ck/gm/step_2 (step 2)" in again.stdout
    assert "[gs] resuming from ck/gs/step_2 (step 2)" in again.stdout
    for name, steps in (("gm", 4), ("gs", 3)):
        _assert_same(_rows(runner, f"logs/{name}"), solo[name])
        resumed = _responses(runner, name)[steps:]  # the steps after 2, sampled again
        assert resumed == _responses(runner, f"solo-{name}")[2:steps]


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


def _partner(runner, algorithm: str) -> tuple[str, str, tuple[str, ...]]:
    """The adapter trained beside a 30-step SFT adapter in the signal test: its recipe, name
    and the overrides of its solo run."""
    if algorithm == "dpo":
        _, dpo = _recipes(runner, dpo_changes={"dpo.max_num_steps": 24, "dpo.val_period": 0,
                                               "checkpointing.save_period": 4})
        return dpo, "dpo", ()
    grpo = _grpo(runner, "grpo", {"grpo.max_num_steps": 16, "grpo.val_period": 0,
                                  "checkpointing.save_period": 4})
    return grpo, "grpo", ("env.reward_kwargs.log=responses-solo-grpo.jsonl",)


@pytest.mark.slow
@pytest.mark.parametrize("partner", ["dpo", "grpo"])
def test_sigterm_and_sigkill_then_resume_match_the_solo_runs_for_every_adapter(runner, partner):
    sft, _ = _recipes(runner, {"sft.max_num_steps": 30, "sft.val_period": 0,
                               "checkpointing.save_period": 3})
    other, name, solo_overrides = _partner(runner, partner)
    reference = {"sft": _solo(runner, sft, "sft"),
                 name: _solo(runner, other, name, *solo_overrides)}
    # SIGTERM: every adapter checkpoints its last completed step and the job exits 75.
    proc = runner.popen("run", sft, other, *QUIET)
    _wait_for_rows(runner, f"logs/{name}", 5, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err
    for adapter in ("sft", name):
        assert f"[{adapter}] stopped by SIGTERM after step" in out, out
    # SIGKILL mid-run: nothing is written on the way out; each resumes its last checkpoint.
    proc = runner.popen("run", sft, other, *QUIET)
    _wait_for_rows(runner, f"logs/{name}", 12, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = runner.run("run", sft, other, *QUIET)
    assert "[sft] resuming from" in again.stdout and f"[{name}] resuming from" in again.stdout
    _assert_same(_rows(runner, "logs/sft"), reference["sft"])
    _assert_same(_rows(runner, f"logs/{name}"), reference[name])


@pytest.mark.slow  # ~3 min (6 on a busy machine): two ranks for each of 4 runs
def test_tensor_parallel_joint_run_matches_the_solo_tp2_runs_and_resumes_exactly(runner):
    """tp=2 on two gloo ranks: the shared base is sharded once, each adapter's A and B as its
    solo tp=2 run shards them; every adapter's metrics equal its solo tp=2 run's."""
    tp2 = {"policy.dtensor_cfg.tensor_parallel_size": 2, "cluster.gpus_per_node": 2,
           "policy.dtensor_cfg.lora_cfg.use_triton": False}
    sft, dpo = _recipes(runner, {"sft.max_num_steps": 4, **tp2},
                        {"dpo.max_num_steps": 3, **tp2})
    solo = {"sft": _solo(runner, sft, "sft"), "dpo": _solo(runner, dpo, "dpo")}
    done = runner.run("run", sft, dpo, *QUIET)
    assert "[sft] finished sft at step 4" in done.stdout
    assert "[dpo] finished dpo at step 3" in done.stdout
    _assert_same(_rows(runner, "logs/sft"), solo["sft"])
    _assert_same(_rows(runner, "logs/dpo"), solo["dpo"])
    ck = runner.workdir / "ck"
    _drop(ck / "sft" / "step_4", ck / "dpo" / "step_3")
    again = runner.run("run", sft, dpo, *QUIET)
    assert "[sft] resuming from ck/sft/step_2 (step 2)" in again.stdout
    assert "[dpo] resuming from ck/dpo/step_2 (step 2)" in again.stdout
    _assert_same(_rows(runner, "logs/sft"), solo["sft"])
    _assert_same(_rows(runner, "logs/dpo"), solo["dpo"])
