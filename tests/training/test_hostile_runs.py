"""Runs facing hostile surroundings: modules planted in the working directory never run inside
the ranks; pickle weights are refused unless opted in, and then read with weights_only=True."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.conftest import QUIET

PLANTED = """\
import pathlib
pathlib.Path(__file__).with_name("PLANTED_RAN").write_text("yes")
print("PLANTED MODULE RAN")
raise ImportError("planted module")
"""


@pytest.mark.slow
def test_module_planted_in_the_working_directory_never_runs_in_ranks(runner):
    (runner.workdir / "safetensors.py").write_text(PLANTED)
    # control: a plain `python` in that directory does import the planted module
    control = subprocess.run([sys.executable, "-c", "import safetensors"], cwd=runner.workdir,
                             capture_output=True, text=True)
    assert "PLANTED MODULE RAN" in control.stdout
    (runner.workdir / "PLANTED_RAN").unlink()
    # the launcher as the `lora-rl` console script starts it: no working directory on sys.path
    command = [sys.executable, "-P", "-m", "lora_rl", "run",
               "recipes/sft-tiny-dtensor-lora-tp2.yaml", "sft.max_num_steps=1",
               "sft.val_period=0", "sft.val_at_start=false", "checkpointing.enabled=false",
               *QUIET]
    done = subprocess.run(command, cwd=runner.workdir, env=runner.env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (runner.workdir / "PLANTED_RAN").exists()
    assert "PLANTED" not in done.stdout + done.stderr
    assert len(runner.metrics("logs/sft-tiny-dtensor-lora-tp2")) == 1


# ---- pickle weights ---------------------------------------------------------------------------

class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _pickle_model(runner, name: str, payload: bool = False):
    """The tiny model with its weights as `pytorch_model.bin` only (or a pickle that would run
    a command when unpickled without weights_only)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    source = Path(runner.env["LORA_RL_CACHE"]) / "tiny-llama-v1"
    target = runner.workdir / name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors"))
    state = load_file(source / "model.safetensors")
    torch.save({"x": _Payload(str(runner.workdir / "PWNED"))} if payload else state,
               target / "pytorch_model.bin")
    return target


def _run_on(runner, model: Path, *extra: str):
    return runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml", f"policy.model_name={model}",
                      "sft.max_num_steps=1", "sft.val_period=0", "sft.val_at_start=false",
                      "checkpointing.enabled=false", *QUIET, *extra, check=False, timeout=300)


def test_pickle_only_model_is_refused_at_validate_and_run(runner):
    model = _pickle_model(runner, "pickled")
    checked = runner.run("validate", "recipes/sft-tiny-dtensor-lora.yaml", "--model", str(model),
                         check=False)
    assert checked.returncode == 1 and "LR804" in checked.stdout
    assert "save_pretrained" in checked.stdout  # the conversion command
    done = _run_on(runner, model)
    assert done.returncode == 1
    assert "LR804" in done.stdout + done.stderr and "save_pretrained" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not (runner.workdir / "logs").exists()


def test_opted_in_malicious_pickle_is_refused_cleanly_and_never_runs(runner):
    model = _pickle_model(runner, "hostile", payload=True)
    done = _run_on(runner, model, "policy.allow_pickle_weights=true")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "LR805" in done.stdout + done.stderr  # validate warned about the opt-in
    assert "LR804" in done.stderr and "weights_only=True" in done.stderr
    assert "Traceback" not in done.stderr and "UnpicklingError" not in done.stderr
    assert not (runner.workdir / "PWNED").exists()


@pytest.mark.slow
def test_opted_in_plain_pickle_trains(runner):
    model = _pickle_model(runner, "pickled")
    done = _run_on(runner, model, "policy.allow_pickle_weights=true")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(runner.metrics("logs/sft-tiny-dtensor-lora")) == 1
