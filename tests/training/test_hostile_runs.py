"""Runs facing hostile surroundings: modules planted in the working directory never run inside
the ranks."""

import subprocess
import sys

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
