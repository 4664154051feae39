"""Checkpoints whose manifest matches but whose content is wrong (crafted, or copied from another
run): resume skips them for the previous checkpoint with one line, export refuses them; no
traceback either way."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_rl.checkpoint import CheckpointError, load_checkpoint
from lora_rl.tensor_guard import check_adapter, check_resumable
from tests.training.conftest import QUIET

ARGS = ["recipes/sft-tiny-dtensor-lora.yaml", "sft.val_period=0", "sft.val_at_start=false",
        "checkpointing.save_period=3", "checkpointing.keep_top_k=2",
        "checkpointing.checkpoint_dir=ck", "logger.log_dir=logs/c", *QUIET]
A = "model.layers.0.self_attn.q_proj.lora_A.weight"
B = "model.layers.0.self_attn.q_proj.lora_B.weight"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def craft(step_dir: Path, group: str = "adapter", change=None, state=None) -> None:
    """Rewrite one tensor file (or state.json) and the manifest's checksums to match."""
    if change is not None:
        tensors = load_file(str(step_dir / f"{group}.safetensors"))
        change(tensors)
        save_file(tensors, str(step_dir / f"{group}.safetensors"))
    if state is not None:
        data = json.loads((step_dir / "state.json").read_text())
        state(data)
        (step_dir / "state.json").write_text(json.dumps(data))
    manifest = json.loads((step_dir / "manifest.json").read_text())
    manifest["files"] = {name: _sha(step_dir / name) for name in manifest["files"]}
    (step_dir / "manifest.json").write_text(json.dumps(manifest))


def _set(name, value):
    return lambda t: t.__setitem__(name, value(t[name]))


CRAFTS = {
    "wrong-shape": dict(change=_set(A, lambda t: torch.zeros(t.shape[0], t.shape[1] + 1))),
    "wrong-dtype": dict(change=_set(A, lambda t: t.double())),
    "nan-adapter": dict(change=_set(B, lambda t: t * float("nan"))),
    "missing-tensor": dict(change=lambda t: t.pop(A)),
    "extra-tensor": dict(change=lambda t: t.__setitem__("evil.lora_A.weight", torch.zeros(2))),
    "inf-optimizer": dict(group="optimizer", change=lambda t: t.__setitem__(
        next(iter(t)), torch.full_like(t[next(iter(t))], float("inf")))),
    "optimizer-shape": dict(group="optimizer", change=lambda t: t.__setitem__(
        f"{A}::exp_avg", torch.zeros(3))),
    "bad-data-state": dict(state=lambda s: s["algorithm"].__setitem__("data", {"epoch": "x"})),
    "no-optimizer-meta": dict(state=lambda s: s.pop("optimizer_meta")),
    "wrong-typed-field": dict(state=lambda s: s["optimizer_meta"].__setitem__("scheduler", "x")),
    "future-schema": dict(state=lambda s: s.__setitem__("schema_version", 99)),
    "other-params": dict(state=lambda s: s["optimizer_meta"]["optimizer"]["param_groups"][0]
                         .__setitem__("params", ["nope"])),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, model_cache):
    from tests.training.conftest import Runner

    runner = Runner(tmp_path_factory.mktemp("crafted"), model_cache)
    runner.run("run", *ARGS, "sft.max_num_steps=6")
    return runner


@pytest.mark.parametrize("name", sorted(CRAFTS))
def test_crafted_content_fails_the_resume_check(checkpoints, tmp_path, name):
    import shutil

    good = load_checkpoint(checkpoints.workdir / "ck" / "step_6")
    expected = {"adapter": good.tensors["adapter"], "optimizer": good.tensors["optimizer"]}
    meta = good.state["optimizer_meta"]
    copy = tmp_path / "step_6"
    shutil.copytree(checkpoints.workdir / "ck" / "step_6", copy)
    craft(copy, **CRAFTS[name])
    crafted = load_checkpoint(copy)  # the manifest matches: only the content check can tell
    with pytest.raises(CheckpointError):
        check_resumable(crafted, expected, meta)
    check_resumable(good, expected, meta)


@pytest.mark.parametrize("name", ["nan-adapter",
                                  pytest.param("wrong-shape", marks=pytest.mark.slow),
                                  pytest.param("bad-data-state", marks=pytest.mark.slow)])
def test_resume_falls_back_past_a_crafted_checkpoint(checkpoints, tmp_path, name):
    import shutil

    from tests.training.conftest import Runner

    runner = Runner(tmp_path / "w", Path(checkpoints.env["LORA_RL_CACHE"]))
    shutil.copytree(checkpoints.workdir / "ck", runner.workdir / "ck")
    craft(runner.workdir / "ck" / "step_6", **CRAFTS[name])
    done = runner.run("run", *ARGS, "sft.max_num_steps=7", check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "skipping checkpoint: ck/step_6" in out
    assert "resuming from ck/step_3 (step 3)" in out
    assert "Traceback" not in out


def test_a_checkpoint_from_a_newer_lora_rl_stops_resume_and_export(checkpoints, tmp_path):
    """Not skipped for step_3: that would train over progress the newer run made."""
    import shutil

    from tests.training.conftest import Runner

    runner = Runner(tmp_path / "w", Path(checkpoints.env["LORA_RL_CACHE"]))
    shutil.copytree(checkpoints.workdir / "ck", runner.workdir / "ck")
    craft(runner.workdir / "ck" / "step_6", **CRAFTS["future-schema"])
    done = runner.run("run", *ARGS, "sft.max_num_steps=7", check=False)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "schema_version 99" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "resuming from" not in done.stdout
    export = runner.run("export", "--checkpoint", "ck", "--format", "peft", "--out", "out",
                        check=False)
    assert export.returncode == 1
    assert "schema_version 99" in " ".join(export.stderr.split())
    assert "Traceback" not in export.stderr and not (runner.workdir / "out").exists()


# ---- export -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "says"), [
    (_set(B, lambda t: t * float("nan")), "NaN or inf"),
    (_set(A, lambda t: torch.zeros(t.shape[0], t.shape[1] + 1)), "the base model's layer maps"),
    (_set(A, lambda t: torch.zeros(t.shape[0] + 1, t.shape[1])), "not of the recipe's rank 8"),
    (lambda t: t.pop(B), "has only lora_A"),
    (lambda t: t.__setitem__("model.evil.lora_A.weight", t[A].clone()) or
     t.__setitem__("model.evil.lora_B.weight", t[B].clone()), "not a linear layer of the base "
     "model"),
])
def test_export_refuses_nan_and_wrong_shape_adapters(checkpoints, tmp_path, change, says):
    import shutil

    step = tmp_path / "step_6"
    shutil.copytree(checkpoints.workdir / "ck" / "step_6", step)
    craft(step, change=change)
    for fmt in ("peft", "merged") if "NaN" in says else ("peft",):
        out = checkpoints.workdir / "out" / f"{tmp_path.name}-{fmt}"
        done = checkpoints.run("export", "--checkpoint", str(step), "--format", fmt, "--out",
                               str(out), check=False)
        assert done.returncode == 1, done.stdout + done.stderr
        said = " ".join(done.stderr.split())  # rich wraps long lines
        assert says in said and "nothing was written" in said
        assert "Traceback" not in done.stderr
        assert not out.exists()


def test_check_adapter_accepts_the_real_adapter(checkpoints):
    from lora_rl.model_source import tiny_model_dir
    from lora_rl.tensor_guard import base_linear_shapes

    adapter = load_file(str(checkpoints.workdir / "ck" / "step_6" / "adapter.safetensors"))
    import os

    os.environ.setdefault("LORA_RL_CACHE", checkpoints.env["LORA_RL_CACHE"])
    shapes = base_linear_shapes(Path(checkpoints.env["LORA_RL_CACHE"]) / tiny_model_dir().name)
    assert shapes and A[: -len(".lora_A.weight")] in shapes
    check_adapter(adapter, 8, shapes)

